"""The worker side: Celery configured with safe settings, tasks guarded by attempt fencing."""
