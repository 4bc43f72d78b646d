"""Which programs an instance runs under Supervisor, derived from the spec and the runtime config."""

from __future__ import annotations

import sys
from pathlib import Path

from kvern.constants import (
    APP_GROUP,
    ENV_STATE_DIR,
    HEAD_GRACEFUL_SHUTDOWN_S,
    MAX_POOL_PROCESSES,
    PROGRAM_BROKER,
    PROGRAM_CONTROLLER,
    PROGRAM_NGINX,
    WEB_GROUP,
    WEB_SLOTS,
)
from kvern.processes import app_program_name, pool_group, pool_program_name, web_program_name
from kvern.runtime.head_endpoints import HeadEndpoints
from kvern.runtime.nginx import config_path, nginx_command
from kvern.runtime.rabbitmq import PrivateNode
from kvern.runtime.supervisor import ProgramConfig
from kvern.runtime_config import RuntimeConfig
from kvern.spec import PoolSpec, Spec

# Priorities order start-up and, reversed, shut-down: the front door stops first, the broker last.
PRIORITY_BROKER, PRIORITY_POOLS, PRIORITY_WEB, PRIORITY_CONTROLLER, PRIORITY_NGINX = 10, 20, 30, 40, 50
STOP_MARGIN_S = 15
HEAD_STOP_MARGIN_S = 5  # a head finishes its requests in flight within its graceful shutdown, then exits


def build_programs(spec: Spec, config: RuntimeConfig, broker: PrivateNode | None) -> list[ProgramConfig]:
    state = config.state_path
    env = {ENV_STATE_DIR: str(state), "PYTHONUNBUFFERED": "1"}
    programs: list[ProgramConfig] = []
    if broker is not None:
        programs.append(_broker_program(broker, env))
    for pool in config.only.pools_of(spec):
        programs += _pool_programs(pool, spec, env)
    heads = HeadEndpoints.of(config)
    if config.only.web:
        # Every slot of both colors (runtime/web_heads.py): scaling and reloads start and stop them.
        programs += [_web_program(heads, slot, env, spec.root) for slot in range(WEB_SLOTS)]
        if spec.web.app is not None:
            programs += [_app_program(heads, slot, env, spec.root) for slot in range(WEB_SLOTS)]
    if config.only.web and heads.front_door:
        programs.append(
            ProgramConfig(
                PROGRAM_NGINX,
                nginx_command(config_path(state)),
                environment={ENV_STATE_DIR: str(state)},  # marks it as this instance's (runtime/leftovers.py)
                priority=PRIORITY_NGINX,
                stopsignal="QUIT",  # graceful: finish the requests in flight
                stopwaitsecs=30,
            )
        )
    programs.append(
        ProgramConfig(
            PROGRAM_CONTROLLER,
            [sys.executable, "-m", "kvern.controller"],
            environment=env,
            directory=spec.root,
            priority=PRIORITY_CONTROLLER,
            stopwaitsecs=10,
        )
    )
    return programs


def _broker_program(broker: PrivateNode, env: dict[str, str]) -> ProgramConfig:
    return ProgramConfig(
        PROGRAM_BROKER,
        broker.command(),
        environment={**broker.environment(), ENV_STATE_DIR: env[ENV_STATE_DIR]},
        directory=broker.state_dir,
        priority=PRIORITY_BROKER,
        autostart=True,
        startsecs=2,
        stopwaitsecs=60,
    )


def _web_program(heads: HeadEndpoints, index: int, env: dict[str, str], root: Path) -> ProgramConfig:
    return ProgramConfig(
        web_program_name(index),
        # uvicorn behind a socket of mode 0660 (uvicorn's own --uds makes it 0666), or on the host's address
        [sys.executable, "-m", "kvern.runtime.web_head", heads.api(index).argument()],
        group=WEB_GROUP,
        environment=env,
        directory=root,
        priority=PRIORITY_WEB,
        stopwaitsecs=25,
    )


def _app_program(heads: HeadEndpoints, slot: int, env: dict[str, str], root: Path) -> ProgramConfig:
    return ProgramConfig(
        app_program_name(slot),
        [sys.executable, "-m", "kvern.runtime.app_head", heads.app(slot).argument()],
        group=APP_GROUP,
        environment=env,
        directory=root,  # the team's app is importable from the spec's folder, and may open files relative to it
        priority=PRIORITY_WEB,
        stopwaitsecs=HEAD_GRACEFUL_SHUTDOWN_S + HEAD_STOP_MARGIN_S,
    )


def _pool_programs(pool: PoolSpec, spec: Spec, env: dict[str, str]) -> list[ProgramConfig]:
    # SIGTERM is Celery's warm shutdown: the running job finishes. Wait as long as the longest task may run.
    # Slots up to the hard limit, not the pool's max: `kvern reload` may raise the max (constants.py says why).
    stop_wait = int(spec.longest_time_limit) + STOP_MARGIN_S
    return [
        ProgramConfig(
            pool_program_name(pool.name, i),
            [sys.executable, "-m", "kvern.worker", pool.name, str(i)],
            group=pool_group(pool.name),
            environment=env,
            directory=spec.root,
            priority=PRIORITY_POOLS,
            stopwaitsecs=stop_wait,
            stopasgroup=False,  # only the main process gets TERM; it lets its children finish
        )
        for i in range(MAX_POOL_PROCESSES)
    ]
