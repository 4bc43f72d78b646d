"""The job store: durable job records, their states, attempts, artifacts and scaling events."""
