"""The descriptor budget: caps that fit under RLIMIT_NOFILE start, one more does not."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pymgr.config import Config
from pymgr.service.fdlimit import UNIT_NOFILE_FLOOR, FdBudgetError, check_fd_budget, fd_budget, unit_nofile


def _config(**http: Any) -> Config:
    legacy = {"enabled": True, "secret": "s" * 16, "max_connections": http.pop("legacy", 100)}
    audit = {"read_concurrency": http.pop("audit_reads", 2), "backups": http.pop("backups", 5)}
    return Config.model_validate({"http": {"tcp": "127.0.0.1:0", **http}, "legacy": legacy, "audit": audit})


def test_the_budget_counts_every_listener_cap_and_the_reserve() -> None:
    budget = fd_budget(_config(max_connections=400, reserved_fds=64, legacy=148), http_listeners=2)
    assert budget.total == 400 * 2 + 148 + 2 * (5 + 1) + 64 == 1024
    check_fd_budget(budget, 1024)  # exactly at the limit: fits


def test_one_more_than_the_limit_is_refused_naming_each_key() -> None:
    budget = fd_budget(_config(max_connections=400, reserved_fds=64, legacy=148, backups=6), http_listeners=2)
    with pytest.raises(
        FdBudgetError,
        match=re.escape(
            "[http] max_connections x 2 listeners=800 + [legacy] max_connections=148 + "
            "[audit] read_concurrency x (backups + 1) files=14 + [http] reserved_fds=64 = 1026 > RLIMIT_NOFILE 1024"
        ),
    ):
        check_fd_budget(budget, 1024)


def test_the_audit_readers_files_are_counted() -> None:
    # Each page being read holds every audit file open: 100 backups and 64 readers are 6464 descriptors.
    many = fd_budget(_config(max_connections=10, reserved_fds=32, audit_reads=64, backups=100), 1)
    assert dict(many.parts)["[audit] read_concurrency x (backups + 1) files"] == 64 * 101
    with pytest.raises(FdBudgetError, match=r"\[audit\] read_concurrency x \(backups \+ 1\) files=6464 "):
        check_fd_budget(many, 4096)
    check_fd_budget(
        fd_budget(_config(max_connections=10, reserved_fds=32, audit_reads=1, backups=100), 1), 4096
    )


def test_legacy_off_is_not_counted_and_no_limit_is_no_check() -> None:
    config = Config.model_validate({"http": {"max_connections": 10, "reserved_fds": 32}})
    assert fd_budget(config, 1).total == 10 + 2 * (5 + 1) + 32
    check_fd_budget(fd_budget(config, 1), None)


def test_reserved_fds_has_a_floor() -> None:
    with pytest.raises(ValueError, match="reserved_fds"):
        Config.model_validate({"http": {"reserved_fds": 31}})


def test_the_unit_limit_covers_the_caps_with_a_floor() -> None:
    assert unit_nofile(Config()) == UNIT_NOFILE_FLOOR
    assert unit_nofile(_config(max_connections=40_000)) == 40_000 * 2 + 100 + 2 * (5 + 1) + 256
