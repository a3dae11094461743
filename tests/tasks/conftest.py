"""Fixtures for task tests: real processes, a state dir under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import MakeManager, tasks_config

from pymgr.tasks.manager import TaskManager


@pytest.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[MakeManager]:
    """Build managers on a state dir in tmp_path; each is closed (its runs stopped) afterwards."""
    made: list[TaskManager] = []

    def make(**overrides: Any) -> TaskManager:
        manager = TaskManager(tasks_config(**overrides), tmp_path / "state")
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.aclose()


@pytest.fixture
def manager(make_manager: MakeManager) -> TaskManager:
    return make_manager()
