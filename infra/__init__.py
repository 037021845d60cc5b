"""Cross-cutting infrastructure: settings, clock, database, logging, metrics, services, CLI."""
