"""The AMQP edge: a confirming publisher for upstream systems, and the relay into Kafka."""
