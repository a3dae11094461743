"""The ``[fleet]`` table, the ``fleet:ID`` subject, and a plain daemon that never loads the fleet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pymgr.auth.policy import Policy, PolicyConfig, PolicyError, parse_subject
from pymgr.auth._policysyntax import subject_matches
from pymgr.config import Config, FleetConfig
from pymgr.core.identity import Identity
from pymgr.core.registry import Registry

KEYS = [{"id": "console", "key_file": "console.pub"}]


def _fleet(**fields: Any) -> FleetConfig:
    return FleetConfig.model_validate({"redis_url": "unix:///run/redis.sock", "keys": KEYS, **fields})


def test_defaults_and_paths_resolved_against_the_config_file() -> None:
    fleet = _fleet(password_file="redis.pass")
    assert fleet.host_id and fleet.tags == [] and fleet.lease_s == 30 and fleet.max_age_s == 300
    assert fleet.reaper is True and _fleet(reaper=False).reaper is False
    config = Config.model_validate({"fleet": fleet.model_dump()}).resolve_paths(Path("/etc/pymgr"))
    assert config.fleet is not None
    assert config.fleet.keys[0].key_file == Path("/etc/pymgr/console.pub")
    assert config.fleet.password_file == Path("/etc/pymgr/redis.pass")
    assert Config().fleet is None  # off unless configured


@pytest.mark.parametrize("url", ["unix:///run/redis.sock", "redis://db:6379/0", "rediss://db:6380/1"])
def test_the_three_redis_schemes(url: str) -> None:
    assert _fleet(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"redis_url": "http://db"}, r"the scheme must be one of unix, redis, rediss"),
        ({"host_id": "a:b"}, r"host_id\n  String should match pattern"),
        ({"tags": ["eu", "eu"]}, r"tags \['eu', 'eu'\] name a tag twice"),
        ({"tags": ["e u"]}, r"tag 'e u': letters, digits"),
        ({"keys": []}, r"keys\n  List should have at least 1 item"),
        ({"keys": KEYS * 2}, r"\[\[fleet.keys\]\] ids must be unique"),
        ({"lease_s": 0.5}, r"lease_s\n  Input should be greater than or equal to 1"),
        ({"max_age_s": 0}, r"max_age_s\n  Input should be greater than 0"),
        ({"max_jobs": 0}, r"max_jobs\n  Input should be greater than or equal to 1"),
        ({"output_max_entries": 0}, r"output_max_entries\n  Input should be greater than or equal to 1"),
        ({"max_deliveries": 0}, r"max_deliveries\n  Input should be greater than or equal to 1"),
        ({"dead_max_entries": 0}, r"dead_max_entries\n  Input should be greater than or equal to 1"),
        ({"replay_max_entries": 0}, r"replay_max_entries\n  Input should be greater than or equal to 1"),
        (
            {"replay_max_entries": 10_000_001},
            r"replay_max_entries\n  Input should be less than or equal to 10000000",
        ),
        ({"reap_interval_s": 0}, r"reap_interval_s\n  Input should be greater than 0"),
        (
            {"lease_s": 10, "reap_interval_s": 10},
            r"reap_interval_s \(10\) must be shorter than lease_s \(10\): the reaper renews its lock",
        ),
        ({"reaper": "maybe"}, r"reaper\n  Input should be a valid boolean"),
        ({"forget_host_after_s": 0.5}, r"forget_host_after_s\n  Input should be greater than or equal to 1"),
        (
            {"forget_host_after_s": 366 * 86400 + 1},
            r"forget_host_after_s\n  Input should be less than or equal",
        ),
        ({"stop_report_s": -1}, r"stop_report_s\n  Input should be greater than or equal to 0"),
        ({"stop_report_s": 601}, r"stop_report_s\n  Input should be less than or equal to 600"),
        ({"colour": "red"}, r"colour\n  Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_naming_them(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _fleet(**fields)


def test_limits_hold_at_their_edges() -> None:
    assert _fleet(lease_s=1, max_jobs=1, output_max_entries=1).max_jobs == 1
    assert _fleet(max_deliveries=1, dead_max_entries=1).max_deliveries == 1
    assert _fleet().replay_max_entries == 100_000
    assert _fleet(replay_max_entries=1).replay_max_entries == 1
    assert _fleet(replay_max_entries=10_000_000).replay_max_entries == 10_000_000
    assert _fleet(lease_s=30).reap_every_s == 10  # a third of the lease unless set
    assert _fleet(lease_s=30, reap_interval_s=29.5).reap_every_s == 29.5
    assert _fleet(max_jobs=10_000).max_jobs == 10_000
    assert (_fleet().forget_host_after_s, _fleet().stop_report_s) == (7 * 86400, 5)
    assert _fleet(forget_host_after_s=1, stop_report_s=0).forget_host_after_s == 1
    assert _fleet(forget_host_after_s=366 * 86400, stop_report_s=600).stop_report_s == 600
    with pytest.raises(ValidationError, match="less than or equal to 10000"):
        _fleet(max_jobs=10_001)


FLEET = Identity(transport="fleet", fleet_key="console", peer="fleet job j1")


def test_the_fleet_subject_matches_only_a_fleet_job_of_that_key() -> None:
    subject = parse_subject("fleet:console")
    assert subject_matches(subject, FLEET, 0)
    assert not subject_matches(subject, Identity(transport="fleet", fleet_key="other"), 0)
    # An HMAC key of the same name is another caller, and ``any`` never includes a fleet job.
    assert not subject_matches(subject, Identity(transport="tcp", key_id="console"), 0)
    assert not subject_matches(parse_subject("key:console"), FLEET, 0)
    assert not subject_matches(parse_subject("any"), FLEET, 0)


def test_a_rule_naming_an_unknown_fleet_key_is_refused() -> None:
    config = PolicyConfig.model_validate({"rules": [{"subjects": ["fleet:rogue"], "actions": ["demo.*"]}]})
    with pytest.raises(
        PolicyError, match=r"subject 'fleet:rogue' names no key in \[\[fleet.keys\]\]; keys: console$"
    ):
        Policy(config, Registry(), fleet_key_ids=["console"], owner_uid=0)
    Policy(config, Registry(), fleet_key_ids=["rogue"], owner_uid=0)


def test_a_plain_daemon_and_the_client_never_import_the_fleets_dependencies() -> None:
    script = (
        "import sys, pymgr.daemon, pymgr.client, pymgr.cli.app, pymgr.fleet\n"
        "print(sorted(m for m in ('redis', 'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr, out.stdout) == (0, "", "[]\n")
