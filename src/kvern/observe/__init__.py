"""Instance-wide metrics: what the controller measures and publishes for every web head's `/api/metrics`."""
