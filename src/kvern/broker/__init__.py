"""The broker side: queue topology, dead letters, publishing with confirms, and the management API."""
