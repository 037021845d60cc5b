"""dramatiq workers: notification jobs from RabbitMQ, delivered through the notifiers."""
