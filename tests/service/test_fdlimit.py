"""The descriptor budget: caps that fit under RLIMIT_NOFILE start, one more does not."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pymgr.config import Config
from pymgr.service.fdlimit import UNIT_NOFILE_FLOOR, FdBudgetError, check_fd_budget, fd_budget, unit_nofile


def _config(**http: Any) -> Config:
    legacy = {"enabled": True, "secret": "s" * 16, "max_connections": http.pop("legacy", 100)}
    return Config.model_validate({"http": {"tcp": "127.0.0.1:0", **http}, "legacy": legacy})


def test_the_budget_counts_every_listener_cap_and_the_reserve() -> None:
    budget = fd_budget(_config(max_connections=400, reserved_fds=64, legacy=160), http_listeners=2)
    assert budget.total == 400 * 2 + 160 + 64 == 1024
    check_fd_budget(budget, 1024)  # exactly at the limit: fits


def test_one_more_than_the_limit_is_refused_naming_each_key() -> None:
    budget = fd_budget(_config(max_connections=400, reserved_fds=64, legacy=161), http_listeners=2)
    with pytest.raises(
        FdBudgetError,
        match=re.escape(
            "[http] max_connections x 2 listeners=800 + [legacy] max_connections=161 + [http] reserved_fds=64 = 1025 "
            "> RLIMIT_NOFILE 1024"
        ),
    ):
        check_fd_budget(budget, 1024)


def test_legacy_off_is_not_counted_and_no_limit_is_no_check() -> None:
    config = Config.model_validate({"http": {"max_connections": 10, "reserved_fds": 32}})
    assert fd_budget(config, 1).total == 42
    check_fd_budget(fd_budget(config, 1), None)


def test_reserved_fds_has_a_floor() -> None:
    with pytest.raises(ValueError, match="reserved_fds"):
        Config.model_validate({"http": {"reserved_fds": 31}})


def test_the_unit_limit_covers_the_caps_with_a_floor() -> None:
    assert unit_nofile(Config()) == UNIT_NOFILE_FLOOR
    assert unit_nofile(_config(max_connections=40_000)) == 40_000 * 2 + 100 + 256
