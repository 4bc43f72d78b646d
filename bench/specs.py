"""The spec files the bench runs kvern with (besides the reports example's own)."""

from __future__ import annotations

NOOP_TASK = "bench.noop"
SLEEP_TASK = "bench.sleep"
NOOP_CONCURRENCY = 4
NOOP_PREFETCH = 8  # B3's "kvern, prefetch 8" row: acks after the writer's commit (worker/deferred_ack.py)


def noop_spec(concurrency: int = NOOP_CONCURRENCY, prefetch: int = 1) -> str:
    """B2/B3: one pool of exactly one worker process running no-op jobs."""
    return f"""
[app]
name = "bench"
tasks = "tasks"

[web]
heads = 2
rate = 0          # B2/B3 measure the front door's capacity from one address, not its per-address limits
connections = 0
key_rate = 0      # nor its per-key ones (the load carries one key)

[[pools]]
name = "noop"
queues = ["noop"]
concurrency = {concurrency}
min = 1
max = 1
idle_after = 30
prefetch = {prefetch}

[tasks."{NOOP_TASK}"]
queue = "noop"
"""


SHOP_APP_THREADS = 32  # B6: gunicorn threads per head, the same for kvern's app heads and bare gunicorn


def shop_spec(app: str) -> str:
    """B6: the team's app on 2 web heads; a pool for the view's jobs that `--only web` leaves unstarted."""
    return f"""
[app]
name = "shop"
tasks = "tasks"

[web]
heads = 2
app = "{app}"
app_threads = {SHOP_APP_THREADS}
rate = 0          # one address sends all the load: the front door's capacity, not its per-address limits
connections = 0
key_rate = 0

[[pools]]
name = "noop"
queues = ["noop"]
min = 0
max = 1

[tasks."{NOOP_TASK}"]
queue = "noop"
"""


def density_spec(concurrency: int) -> str:
    """B4: the reports example's task in one worker process with `concurrency` slots."""
    return f"""
[app]
name = "density"
tasks = "tasks"
static = "static"

[web]
heads = 1

[[pools]]
name = "dense"
queues = ["reports"]
concurrency = {concurrency}
min = 1
max = 1

[tasks."tasks.generate_heavy_report"]
queue = "reports"
retries = 0
"""


def elastic_spec(idle_after: float) -> str:
    """B5: `elastic` (1..4 processes of 1 slot, a process per queued job) and `cold` (0..1 process)."""
    return f"""
[app]
name = "elastic"
tasks = "tasks"

[web]
heads = 2

[[pools]]
name = "elastic"
queues = ["elastic"]
concurrency = 1
min = 1
max = 4
target_backlog = 1
idle_after = {idle_after}

[[pools]]
name = "cold"
queues = ["cold"]
concurrency = 1
min = 0
max = 1
idle_after = {idle_after}

[tasks."{SLEEP_TASK}"]
queue = "elastic"

[tasks."{NOOP_TASK}"]
queue = "cold"
"""
