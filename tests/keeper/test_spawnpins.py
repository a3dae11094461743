"""The keeper's pinning of checked paths for one spawn (``keeper/spawnpins.py``); the attack replays are in
``tests/hostile/test_params.py``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from pymgr._pinpath import can_pin
from pymgr.keeper.spawn import SpawnError, SpawnSpec
from pymgr.keeper.spawnpins import pinned

pytestmark = pytest.mark.skipif(not can_pin(), reason="needs O_PATH and /proc/self/fd")


def spec(*argv: str) -> SpawnSpec:
    return SpawnSpec(argv=list(argv), env={})


def test_each_path_becomes_an_inheritable_descriptor_for_the_spawn_only(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    part = {"base": str(tmp_path), "path": f"{tmp_path}/d"}
    with pinned(spec("/bin/ls", f"-x{tmp_path}/d"), [{"index": 1, "parts": ["-x", part]}]) as ready:
        (fd,) = ready.pass_fds
        assert fd > 2 and os.get_inheritable(fd)
        assert ready.argv == ["/bin/ls", f"-x/proc/self/fd/{fd}"]
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{tmp_path}/d"
    with pytest.raises(OSError):
        os.fstat(fd)  # closed after the spawn


def test_a_swapped_directory_fails_the_spawn_and_holds_nothing(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d").symlink_to(tmp_path / "elsewhere")
    held = set(os.listdir("/proc/self/fd"))
    pins = [{"index": 1, "parts": [{"base": str(tmp_path), "path": f"{tmp_path}/d"}]}]
    message = (
        f"spawn failed: argv[1]: path '{tmp_path}/d' changed after it was checked: 'd' is now a symbolic link"
    )
    with (
        pytest.raises(SpawnError, match=f"^{re.escape(message)}$"),
        pinned(spec("/bin/ls", f"{tmp_path}/d"), pins),
    ):
        pass
    assert set(os.listdir("/proc/self/fd")) <= held


@pytest.mark.parametrize(
    ("pins", "why"),
    [
        ({"index": 1}, "needs an argv index and its parts"),
        ([{"index": 5, "parts": ["x"]}], "needs an argv index and its parts"),
        ([{"index": 1, "parts": [{"base": "/"}]}], "needs an argv index and its parts"),
        ([{"index": 1, "parts": ["/other"]}], "its parts are not argv"),
        ([{"index": 1, "parts": [{"base": "/", "path": "/other"}]}], "its parts are not argv"),
    ],
)
def test_malformed_pins_fail_the_spawn(pins: Any, why: str) -> None:
    with pytest.raises(SpawnError, match=re.escape(why)), pinned(spec("/bin/ls", "/tmp"), pins):
        pass


def test_no_pins_leave_the_spec_as_it_is() -> None:
    original = spec("/bin/ls", "/tmp")
    for pins in (None, []):
        with pinned(original, pins) as ready:
            assert ready is original


@pytest.mark.parametrize("identity", [{"user": "nobody"}, {"group": "nogroup"}])
def test_a_run_under_its_own_user_gets_the_text_path(tmp_path: Path, identity: dict[str, str]) -> None:
    # A descriptor opened as the keeper's user would skip the run's own rights on the directories above.
    (tmp_path / "d").mkdir()
    argv = ["/bin/ls", f"{tmp_path}/d"]
    pins = [{"index": 1, "parts": [{"base": str(tmp_path), "path": f"{tmp_path}/d"}]}]
    with pinned(SpawnSpec(argv=argv, env={}, **identity), pins) as ready:
        assert (ready.argv, ready.pass_fds) == (argv, ())
