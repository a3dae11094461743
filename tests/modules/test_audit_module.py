"""The audit module: reads of the log take a turn before opening its files, at most read_concurrency at once."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pymgr.auth.auditread import AuditQuery, OpenFile
from pymgr.auth.settings import AuditConfig
from pymgr.modules.audit import AuditModule


def audit_files_open(directory: Path) -> int:
    """Descriptors of this process open on a file in ``directory`` (the kernel's count, not ours)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
        except OSError:  # closed meanwhile
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_burst_of_reads_holds_at_most_read_concurrency_pages_of_files(
    tmp_path: Path, concurrency: int
) -> None:
    backups = 3
    path = tmp_path / "audit.log"
    for name in [path.name, *(f"{path.name}.{n}" for n in range(1, backups + 1))]:
        (tmp_path / name).write_bytes(b'{"time":"2026-01-01T00:00:00.000Z"}\n')
    module = AuditModule(AuditConfig(path=path, backups=backups, read_concurrency=concurrency))
    seen: list[int] = []
    scan = module.reader.scan

    def slow_scan(files: list[OpenFile], query: AuditQuery) -> Any:
        seen.append(audit_files_open(tmp_path))
        time.sleep(0.05)  # a long scan: the other reads of the burst arrive meanwhile
        return scan(files, query)

    module.reader.scan = slow_scan  # type: ignore[method-assign]
    pages = await asyncio.gather(*(module.read() for _ in range(10)))
    assert all(len(page["records"]) == backups + 1 for page in pages)
    assert len(seen) == 10 and max(seen) == concurrency * (backups + 1)
    assert audit_files_open(tmp_path) == 0


def test_read_concurrency_is_bounded_both_ways() -> None:
    assert AuditConfig(read_concurrency=1).read_concurrency == 1
    assert AuditConfig(read_concurrency=64).read_concurrency == 64
    for bad in (0, 65):
        with pytest.raises(ValueError, match="read_concurrency"):
            AuditConfig(read_concurrency=bad)
