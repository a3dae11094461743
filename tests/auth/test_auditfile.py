"""The audit file's whole lines and its space reserve: cut-back writes, the reserve given back and held again."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pymgr.auth._auditreserve import SpaceReserve
from pymgr.auth.audit import AuditLog, Auditor
from pymgr.core.identity import Identity
from pymgr.errors import Unavailable

WWW = Identity(transport="unix", uid=33, gid=33, pid=10, user="www-data")

SLACK = 16 * 1024  # audit._BLOCK_SLACK_BYTES


class ShortThenFull:
    """``os.write`` as a filesystem with room for ``room`` more bytes answers it."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.real = os.write

    def __call__(self, fd: int, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = data[: self.room]
        self.room -= len(part)
        return self.real(fd, part)


def test_a_short_write_is_cut_back_and_reported_as_no_space(tmp_path: Path, monkeypatch: Any) -> None:
    audit_log = AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1)
    audit_log.write_line(b'{"n":0}\n')
    monkeypatch.setattr(os, "write", ShortThenFull(5))
    with pytest.raises(OSError) as info:
        audit_log.write_line(b'{"n":1}\n')
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    audit_log.write_line(b'{"n":2}\n')
    assert (tmp_path / "audit.log").read_bytes() == b'{"n":0}\n{"n":2}\n'


def test_a_partial_line_that_cannot_be_cut_starts_the_next_record_on_a_fresh_line(
    tmp_path: Path, monkeypatch: Any
) -> None:
    audit_log = AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1)
    monkeypatch.setattr(os, "write", ShortThenFull(3))

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError):
        audit_log.write_line(b'{"n":1}\n')
    monkeypatch.undo()
    audit_log.write_line(b'{"n":2}\n')
    assert (tmp_path / "audit.log").read_bytes().splitlines() == [b'{"n', b'{"n":2}']


def test_with_a_reserve_a_full_disk_still_takes_the_record_then_calls_wait(
    tmp_path: Path, monkeypatch: Any
) -> None:
    reserve = SpaceReserve(tmp_path / "audit.reserve", 64 * 1024)
    reserve.open()
    assert reserve.full and (tmp_path / "audit.reserve").stat().st_size == 64 * 1024
    auditor = Auditor(AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1, reserve=reserve))
    held = auditor.hold(WWW, "demo", "echo", "{}")
    writes = ShortThenFull(0)
    real_write = os.write

    def write(
        fd: int, data: bytes
    ) -> int:  # the log's writes find the disk full until the reserve is given back
        return real_write(fd, data) if not reserve.full else writes(fd, data)

    monkeypatch.setattr(os, "write", write)
    auditor.log.write_line(b'{"n":1}\n')
    auditor.release(held)
    assert not reserve.full and (tmp_path / "audit.reserve").stat().st_size == 0
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("U", (), {"free": 64 * 1024})())
    with pytest.raises(
        Unavailable, match=r"^the filesystem of the audit log .* has no room for its space reserve"
    ):
        auditor.hold(WWW, "demo", "echo", "{}")
    monkeypatch.undo()
    auditor.hold(WWW, "demo", "echo", "{}")  # room again: held again
    assert reserve.full and (tmp_path / "audit.log").read_bytes() == b'{"n":1}\n'


@pytest.mark.parametrize("fits", [True, False])
def test_the_records_held_at_once_fit_the_reserve_both_sides(tmp_path: Path, fits: bool) -> None:
    reserve = SpaceReserve(tmp_path / "audit.reserve", 64 * 1024)
    reserve.open()
    auditor = Auditor(AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1, reserve=reserve))
    room = 64 * 1024 - SLACK
    base = auditor.hold(WWW, "m", "a", "")  # a record's size without its params
    auditor.release(base)
    first = auditor.hold(WWW, "m", "a", "x" * (room - 1000 - base))
    assert first == room - 1000
    if fits:
        assert auditor.hold(WWW, "m", "a", "x" * (1000 - base)) == 1000
    else:
        with pytest.raises(
            Unavailable,
            match=r"^the records of running calls would not fit in the audit space reserve "
            r"\(reserve_bytes=65536; 48152 bytes held, this call's record up to 1001\)",
        ):
            auditor.hold(WWW, "m", "a", "x" * (1001 - base))
        auditor.release(first)
        auditor.hold(WWW, "m", "a", "x" * (1001 - base))  # once the running call's record is written


def test_the_reserve_is_private_and_never_followed_through_a_symlink(tmp_path: Path) -> None:
    reserve = SpaceReserve(tmp_path / "audit.reserve", 64 * 1024)
    reserve.open()
    assert (tmp_path / "audit.reserve").stat().st_mode & 0o777 == 0o600
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / "link.reserve").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        SpaceReserve(tmp_path / "link.reserve", 64 * 1024).open()
    assert (tmp_path / "elsewhere").read_text() == "keep"
