"""The broker side: queue topology, dead letters, publishing with confirms, and queue depths read over AMQP."""
