"""The submitter of this process, made on first use from the instance's runtime config.

Any process kvern started has KVERN_STATE_DIR; from it come the spec snapshot, the catalog, the store URL and the
web role's broker URL. The config and the catalog are loaded once; the store and broker connections belong to
one process: a child forked after they were made (gunicorn's preload) makes its own instead of sharing sockets.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from kvern.broker.confirming import ConfirmingPublisher
from kvern.catalog import TaskCatalog, load_user_app
from kvern.constants import ROLE_WEB
from kvern.enqueue.submitter import Submitter
from kvern.jobs.store import JobStore
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec


@dataclass(frozen=True)
class Loaded:
    config: RuntimeConfig
    spec: Spec
    catalog: TaskCatalog


class _ThisProcess:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entered when a tasks module submits while it is being loaded
        self.loaded: Loaded | None = None
        self.submitter: Submitter | None = None
        self.owner_pid = 0

    def after_fork_in_child(self) -> None:
        self.lock = threading.RLock()  # the parent may have held it while forking
        self.submitter = None  # never closed here: its sockets are the parent's


_this = _ThisProcess()
os.register_at_fork(after_in_child=_this.after_fork_in_child)


def loaded() -> Loaded:
    """The runtime config, spec snapshot and catalog of the instance that started this process."""
    with _this.lock:
        if _this.loaded is None:
            config = RuntimeConfig.from_environment()
            spec = config.spec()
            _, catalog = load_user_app(spec)
            _this.loaded = Loaded(config, spec, catalog)
        return _this.loaded


def current_submitter() -> Submitter:
    """This process's submitter (its own store engine and broker connections)."""
    state = loaded()
    with _this.lock:
        if _this.submitter is None or _this.owner_pid != os.getpid():
            store = JobStore(state.config.store_url)
            publisher = ConfirmingPublisher(state.config.broker_urls[ROLE_WEB])
            _this.submitter = Submitter(state.spec, state.catalog, store, publisher)
            _this.owner_pid = os.getpid()
        return _this.submitter


def forget() -> None:
    """Drop what was loaded (tests; a process about to load another instance's config)."""
    with _this.lock:
        if _this.submitter is not None and _this.owner_pid == os.getpid():
            _this.submitter.close()
        _this.loaded, _this.submitter = None, None
