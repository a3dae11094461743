"""examples/production.toml validates, and every key in it has a comment."""

from __future__ import annotations

import re
from pathlib import Path

from pymgr.config import load_config
from pymgr.service.systemd_units import render_units
from tests.conftest import EXAMPLES

PRODUCTION = EXAMPLES / "production.toml"


def test_production_example_loads() -> None:
    config = load_config(PRODUCTION)
    assert config.http.socket_group == "www-data" and config.tasks.on_shutdown == "leave"
    assert [rule.name for rule in config.policy.rules] == ["web back end: scans", "operators"]
    service = render_units(config, PRODUCTION)[0].text
    assert (
        "KillMode=process" in service
        and "ReadWritePaths=-/var/lib/pymgr -/run/pymgr -/var/log/pymgr" in service
    )


def test_every_key_has_a_comment_above_it() -> None:
    lines = PRODUCTION.read_text().splitlines()
    key = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]* = ")
    uncommented = [
        line for i, line in enumerate(lines) if key.match(line) and not lines[i - 1].startswith("#")
    ]
    assert uncommented == []


def test_the_example_keeps_tasks_and_paths_absolute() -> None:
    config = load_config(PRODUCTION)
    assert all(
        Path(p).is_absolute() for p in (config.state_dir, config.service.pidfile, config.http.unix_socket)
    )
