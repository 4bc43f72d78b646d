"""[hosts]: which machine runs what, validated at the edge; the shared secrets file; `--host`'s refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvern.errors import SpecError, StartError
from kvern.runtime.cluster import amqp_urls, broker_hosts, node_name
from kvern.runtime.hosts import HostInstance, host_of, tiers_of
from kvern.runtime.instance import ROLES, Instance
from kvern.runtime.shared_secrets import SharedSecrets
from kvern.runtime_config import RuntimeConfig, snapshot_spec
from kvern.spec import Tiers, load_spec

BASE = """
[app]
tasks = "tasks"

[store]
url = "postgresql://postgres@127.0.0.1:5432/test"

[[pools]]
name = "main"

[[pools]]
name = "bulk"
"""
LAYOUT = """
[hosts.front]
address = "10.0.0.5"
roles = ["front", "web"]

[hosts.b1]
address = "10.0.1.1"
roles = ["broker"]

[hosts.b2]
address = "10.0.1.2"
roles = ["broker"]

[hosts.b3]
address = "10.0.1.3"
roles = ["broker"]

[hosts.w1]
address = "10.0.2.1"
roles = ["workers", "controller"]
pools = ["bulk"]
"""


def _spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kvern.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_hosts_parse_into_roles_addresses_and_pools(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path, BASE + LAYOUT))
    assert [host.name for host in spec.hosts] == ["front", "b1", "b2", "b3", "w1"]
    worker = host_of(spec, "w1")
    assert worker.roles == {"workers", "controller"} and worker.pools == ("bulk",)
    assert [node_name(host) for host in broker_hosts(spec)] == ["kvern@10.0.1.1", "kvern@10.0.1.2", "kvern@10.0.1.3"]


def test_a_spec_without_hosts_is_one_machine(tmp_path: Path) -> None:
    assert load_spec(_spec_file(tmp_path, BASE)).hosts == ()


def test_failover_urls_list_every_broker_with_this_hosts_node_first(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path, BASE + LAYOUT))
    urls = amqp_urls(spec, "kvern-web", "pw", "kvern", first=host_of(spec, "b2")).split(";")
    assert urls == [
        "amqp://kvern-web:pw@10.0.1.2:5672/kvern",
        "amqp://kvern-web:pw@10.0.1.1:5672/kvern",
        "amqp://kvern-web:pw@10.0.1.3:5672/kvern",
    ]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("10.0.1.2", "10.0.1.1"), "two hosts share an address"),
        (('address = "10.0.1.3"', 'address = "127.0.0.1"'), "hosts.b3.address"),
        (('address = "10.0.1.3"', 'address = "b3.local"'), "not an IPv4 address"),
        (('roles = ["front", "web"]', 'roles = ["nginx"]'), "hosts.front.roles"),
        (('pools = ["bulk"]', 'pools = ["nope"]'), "hosts.w1.pools"),
        (("[hosts.b3]", "[hosts.B3]"), "a host name is"),
        (('address = "10.0.1.3"\nroles = ["broker"]', 'address = "10.0.1.3"\nroles = ["web"]'), "2 broker hosts"),
        (('url = "postgresql://postgres@127.0.0.1:5432/test"', 'url = "sqlite:///x.db"'), "one job store"),
        (('address = "10.0.1.1"', 'address = "10.0.1.1"\npassword = "x"'), "hosts.b1.password: unknown field"),
    ],
)
def test_bad_hosts_are_refused_naming_the_field(tmp_path: Path, change: tuple[str, str], fragment: str) -> None:
    text = (BASE + LAYOUT).replace(*change)
    with pytest.raises(SpecError) as info:
        load_spec(_spec_file(tmp_path, text))
    assert fragment in str(info.value)


def test_broker_hosts_and_an_external_broker_exclude_each_other(tmp_path: Path) -> None:
    text = BASE + '\n[broker]\nurl = "amqp://u:p@10.9.9.9:5672/v"\n' + LAYOUT
    with pytest.raises(SpecError, match="exclude each other"):
        load_spec(_spec_file(tmp_path, text))


def test_secrets_file_is_made_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    made = SharedSecrets.generate(ROLES)
    made.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SharedSecrets.load(path, ROLES) == made
    with pytest.raises(StartError, match="exists"):
        SharedSecrets.generate(ROLES).save(path)  # never overwrites what the hosts may share already


def test_secrets_file_others_can_read_or_lacking_a_role_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    SharedSecrets.generate(ROLES).save(path)
    path.chmod(0o644)
    with pytest.raises(StartError, match="readable by others"):
        SharedSecrets.load(path, ROLES)
    path.chmod(0o600)
    raw = json.loads(path.read_text())
    del raw["broker_passwords"]["worker"]
    path.write_text(json.dumps(raw))
    with pytest.raises(StartError, match="worker"):
        SharedSecrets.load(path, ROLES)
    with pytest.raises(StartError, match="kvern secrets init"):
        SharedSecrets.load(tmp_path / "absent.json", ROLES)


def test_each_host_runs_its_tiers(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path, BASE + LAYOUT))
    assert tiers_of(spec, host_of(spec, "front")) == Tiers(web=True, pools=False)
    assert tiers_of(spec, host_of(spec, "w1")) == Tiers(web=False, pools=False, pool="bulk")


@pytest.mark.parametrize("roles", ['["workers"]', '["workers", "controller"]'])
def test_the_controller_role_is_optional_and_may_be_on_several_hosts(tmp_path: Path, roles: str) -> None:
    # every application host runs a controller (leases decide who leads), so no host or several may name the role
    layout = LAYOUT.replace('roles = ["workers", "controller"]', f"roles = {roles}")
    layout += '\n[hosts.w2]\naddress = "10.0.2.2"\nroles = ["workers", "controller"]\n'
    spec = load_spec(_spec_file(tmp_path, BASE + layout))
    assert [host.name for host in spec.hosts if host.runs("workers")] == ["w1", "w2"]


def test_a_host_with_the_controller_role_alone_runs_no_tier_but_its_controller(tmp_path: Path) -> None:
    layout = LAYOUT + '\n[hosts.c1]\naddress = "10.0.2.9"\nroles = ["controller"]\n'
    spec = load_spec(_spec_file(tmp_path, BASE + layout))
    assert tiers_of(spec, host_of(spec, "c1")) == Tiers(web=False, pools=False)


def test_host_with_a_layout_not_built_per_host_yet_is_refused(tmp_path: Path) -> None:
    # The front door without the web heads: remote web heads are not built yet.
    spec = load_spec(_spec_file(tmp_path, BASE + LAYOUT.replace('roles = ["front", "web"]', 'roles = ["front"]')))
    secrets = tmp_path / "secrets.json"
    SharedSecrets.generate(ROLES).save(secrets)
    instance = Instance(spec, tmp_path / "state")
    assert HostInstance.load(instance, "b1", secrets).host.name == "b1"
    assert HostInstance.load(instance, "w1", secrets).host.name == "w1"
    with pytest.raises(StartError, match="remote web heads"):
        HostInstance.load(instance, "front", secrets)
    with pytest.raises(SpecError, match="not a host of the spec"):
        HostInstance.load(instance, "nope", secrets)


def test_a_host_running_neither_tier_keeps_no_pools_in_its_runtime_config(tmp_path: Path) -> None:
    # runtime.json holds the tiers as text: a controller-only host once read back as running every pool, so its
    # controller took a share of each pool it could not run
    layout = LAYOUT + '\n[hosts.c1]\naddress = "10.0.2.9"\nroles = ["controller"]\n'
    spec = load_spec(_spec_file(tmp_path, BASE + layout))
    secrets = tmp_path / "secrets.json"
    SharedSecrets.generate(ROLES).save(secrets)
    for name in ("c1", "b1"):
        state = tmp_path / name
        state.mkdir()
        host = HostInstance.load(Instance(spec, state), name, secrets)
        host.runtime_config(snapshot_spec(spec, state)).save()
        assert RuntimeConfig.load(state).only.pools_of(spec) == ()
