"""One module per domain area; each has ``attach(app, ctx)`` to add its topics, tables, agents."""
