"""Log files by bytes: rotation and timestamps (the keeper's writer), offsets (the daemon's reader), progress lines."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pymgr.errors import ParamsInvalid, PymgrInternalError, Unavailable
from pymgr.keeper.progress import MAX_LINE_BYTES, MAX_MESSAGE_CHARS, ProgressScanner, parse_line
from pymgr.keeper.runlog import RunLog
from pymgr.tasks.logreader import LogReader, LogSpan


def files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir())}


def test_rotation_at_max_bytes_both_sides(tmp_path: Path) -> None:
    log = RunLog(str(tmp_path), 7, max_bytes=10, keep=2, timestamps=False)
    log.write(b"0123456789")  # exactly the limit: no rotation yet
    assert files(tmp_path) == {"7.log": 10}
    log.write(b"a")  # one past it: rotated, the byte goes to a new file
    assert files(tmp_path) == {"7.log": 1, "7.log.0": 10}
    log.write(b"bcdefghijklmnopqrstu")  # split over files, never past 10 bytes each
    assert files(tmp_path) == {"7.log": 1, "7.log.10": 10, "7.log.20": 10}  # keep=2: 7.log.0 deleted
    assert (tmp_path / "7.log.10").read_bytes() == b"abcdefghij" and (tmp_path / "7.log").read_bytes() == b"u"
    assert (log.base, log.size, log.end) == (30, 1, 31)
    log.close()


def test_resume_goes_on_after_the_last_byte_of_a_dead_keepers_log(tmp_path: Path) -> None:
    first = RunLog(str(tmp_path), 7, max_bytes=10, keep=2, timestamps=False)
    first.write(b"abcdefghijklmnopqrstuvw")
    assert files(tmp_path) == {"7.log": 3, "7.log.0": 10, "7.log.10": 10}
    # The keeper dies here (nothing closed); the next one resumes from the files alone.
    log = RunLog.resume(str(tmp_path), 7, max_bytes=10, keep=2, timestamps=False)
    assert (log.base, log.size, log.end) == (20, 3, 23)
    log.write(b"xyz0123")  # fills 7.log to exactly max_bytes
    log.write(b"!")  # rotates at offset 20; keep=2 still counts the dead keeper's files
    assert files(tmp_path) == {"7.log": 1, "7.log.10": 10, "7.log.20": 10}
    assert (tmp_path / "7.log.20").read_bytes() + (tmp_path / "7.log").read_bytes() == b"uvwxyz0123!"
    assert LogReader(tmp_path).read(7, 20, 100)[0] == b"uvwxyz0123!"  # the daemon reads it as one log
    log.close()
    first.close()


def test_resume_continues_a_half_written_line_without_a_new_stamp(tmp_path: Path) -> None:
    first = RunLog(str(tmp_path), 3, max_bytes=1000, keep=1, timestamps=True)
    first.write(b"one\ntw")
    log = RunLog.resume(str(tmp_path), 3, max_bytes=1000, keep=1, timestamps=True)
    log.write(b"o\nthree\n")
    assert re.fullmatch(rb"\S+Z one\n\S+Z two\n\S+Z three\n", (tmp_path / "3.log").read_bytes())
    log.close()
    first.close()


def test_resume_deletes_rotated_files_past_keep_and_knows_a_line_begun_before_a_rotation(
    tmp_path: Path,
) -> None:
    (tmp_path / "5.log.0").write_bytes(b"0123456789")  # a dead keeper left one more than keep=1
    (tmp_path / "5.log.10").write_bytes(b"half a lin")  # the newest ends mid-line ...
    (tmp_path / "5.log").write_bytes(b"")  # ... and the current file was just started
    log = RunLog.resume(str(tmp_path), 5, max_bytes=1000, keep=1, timestamps=True)
    assert files(tmp_path) == {"5.log": 0, "5.log.10": 10} and (log.base, log.size) == (20, 0)
    log.write(b"e\nnext\n")  # the end of the line begun before: no stamp in the middle of it
    assert re.fullmatch(rb"e\n\S+Z next\n", (tmp_path / "5.log").read_bytes())
    log.close()


def test_resume_of_a_run_that_wrote_nothing_starts_at_zero(tmp_path: Path) -> None:
    log = RunLog.resume(str(tmp_path), 4, max_bytes=10, keep=1, timestamps=False)
    assert (log.base, log.size) == (0, 0)
    log.write(b"x")
    assert files(tmp_path) == {"4.log": 1}
    log.close()


def test_a_log_file_is_created_by_the_first_byte_with_mode_0600(tmp_path: Path) -> None:
    log = RunLog(str(tmp_path), 1, max_bytes=100, keep=1, timestamps=False)
    log.write(b"")
    assert not (tmp_path / "1.log").exists()  # nothing written, no file
    log.write(b"x")
    assert (tmp_path / "1.log").stat().st_mode & 0o777 == 0o600
    log.close()
    log.write(b"after close")
    assert (tmp_path / "1.log").read_bytes() == b"x"


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    (tmp_path / "2.log").symlink_to(tmp_path / "elsewhere")
    log = RunLog(str(tmp_path), 2, max_bytes=100, keep=1, timestamps=False)
    with pytest.raises(OSError, match=r"Too many levels of symbolic links"):
        log.write(b"data")
    assert not (tmp_path / "elsewhere").exists()


def test_bad_writer_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^max_bytes and keep must be >= 1, not 0 and 1$"):
        RunLog(str(tmp_path), 1, max_bytes=0, keep=1, timestamps=False)


def test_timestamps_start_every_line_even_across_chunks(tmp_path: Path) -> None:
    log = RunLog(str(tmp_path), 3, max_bytes=10_000, keep=1, timestamps=True)
    for chunk in (b"one\ntw", b"o\n", b"\nthree"):
        log.write(chunk)
    log.close()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    lines = (tmp_path / "3.log").read_text().split("\n")
    assert [re.sub(stamp, "<t>", line) for line in lines] == ["<t>one", "<t>two", "<t>", "<t>three"]


def reader_with(tmp_path: Path, chunks: list[bytes], max_bytes: int = 10, keep: int = 2) -> LogReader:
    log = RunLog(str(tmp_path), 5, max_bytes=max_bytes, keep=keep, timestamps=False)
    for chunk in chunks:
        log.write(chunk)
    log.close()
    return LogReader(tmp_path)


def test_reader_maps_logical_offsets_across_rotated_files(tmp_path: Path) -> None:
    data = bytes(range(65, 65 + 26))  # A..Z: 26 bytes, files of 10
    reader = reader_with(tmp_path, [data], keep=5)
    assert reader.span(5) == LogSpan(0, 26)
    assert reader.read(5, 0, 100)[0] == data
    assert reader.read(5, 8, 5)[0] == data[8:13]  # across a file boundary
    assert reader.read(5, 25, 10)[0] == b"Z"
    assert reader.read(5, 26, 10)[0] == b""  # exactly at the end: nothing, no error


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (-1, r"^offset: must be >= 0, not -1$"),
        (27, r"^offset 27 is past the end of task 5's log \(26 bytes\)$"),
        (9, r"^offset 9 of task 5's log was rotated away: the log now starts at offset 10$"),
    ],
)
def test_reader_refuses_bad_offsets(tmp_path: Path, offset: int, message: str) -> None:
    reader = reader_with(tmp_path, [b"x" * 26], keep=1)
    with pytest.raises(ParamsInvalid, match=message):
        reader.read(5, offset, 10)
    assert reader.read(5, 10, 100)[0] == b"x" * 16  # the first offset still kept is fine


def test_reader_of_a_run_without_a_log(tmp_path: Path) -> None:
    reader = LogReader(tmp_path)
    assert reader.span(9) == LogSpan(0, 0)
    assert reader.read(9, 0, 10) == (b"", LogSpan(0, 0))


def test_reader_refuses_a_log_that_leads_out_of_the_directory(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "secret").write_text("s")
    (tmp_path / "logs" / "4.log").symlink_to(tmp_path / "secret")
    with pytest.raises(PymgrInternalError, match=r"^log path .*secret escapes the logs directory"):
        LogReader(tmp_path / "logs").read(4, 0, 10)


def test_remove_deletes_every_file_of_one_run_only(tmp_path: Path) -> None:
    reader = reader_with(tmp_path, [b"y" * 25])
    (tmp_path / "55.log").write_text("other run")
    reader.remove(5)
    assert os.listdir(tmp_path) == ["55.log"]


# -- progress lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PYMGR_PROGRESS 42", (42.0, None)),
        (b"PYMGR_PROGRESS 0", (0.0, None)),
        (b"PYMGR_PROGRESS 100 done", (100.0, "done")),
        (b"PYMGR_PROGRESS 100.0", (100.0, None)),
        (b"PYMGR_PROGRESS 100.5", None),  # over 100: just output
        (b"PYMGR_PROGRESS 101", None),
        (b"PYMGR_PROGRESS 42.5 scanning host 10.0.0.1\r", (42.5, "scanning host 10.0.0.1")),
        (b"PYMGR_PROGRESS\t7\tstep two  ", (7.0, "step two")),
        (b"PYMGR_PROGRESS 7 caf\xc3\xa9 \xff", (7.0, "café \ufffd")),
        (b"PYMGR_PROGRESS", None),
        (b"PYMGR_PROGRESS x", None),
        (b"PYMGR_PROGRESS -1", None),
        (b"PYMGR_PROGRESS 42%", None),
        (b" PYMGR_PROGRESS 42", None),
        (b"PYMGR_PROGRESSS 42", None),
    ],
)
def test_parse_line(line: bytes, expected: tuple[float, str | None] | None) -> None:
    assert parse_line(line) == expected


def test_long_messages_are_cut() -> None:
    assert parse_line(b"PYMGR_PROGRESS 1 " + b"m" * 1000) == (1.0, "m" * MAX_MESSAGE_CHARS)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_scanner_finds_lines_in_any_split(size: int) -> None:
    stream = b"hello\nPYMGR_PROGRESS 10 a\nno PYMGR_PROGRESS 99 mid-line\nPYMGR_PROGRESS 20 b\ntail PYMGR_PRO"
    scanner = ProgressScanner()
    seen = [p for i in range(0, len(stream), size) if (p := scanner.feed(stream[i : i + size]))]
    assert seen[-1] == (20.0, "b")
    assert (10.0, "a") in seen or size >= len(stream)
    assert all(p[0] != 99.0 for p in seen)


def test_scanner_returns_the_last_complete_line_of_a_chunk() -> None:
    scanner = ProgressScanner()
    assert scanner.feed(b"PYMGR_PROGRESS 1\nPYMGR_PROGRESS 2\nPYMGR_PROGRESS 3") == (2.0, None)
    assert scanner.feed(b"\n") == (3.0, None)
    assert scanner.feed(b"") is None


def test_scanner_gives_up_on_a_line_longer_than_the_limit_both_sides() -> None:
    at_limit = ProgressScanner()
    line = b"PYMGR_PROGRESS 5 " + b"x" * (MAX_LINE_BYTES - 17)
    assert at_limit.feed(line) is None and at_limit.feed(b"\n") == (5.0, "x" * MAX_MESSAGE_CHARS)
    over = ProgressScanner()
    assert over.feed(line + b"x") is None and over.feed(b"\n") is None
    assert over.feed(b"PYMGR_PROGRESS 6\n") == (6.0, None)  # the next line is looked at again


def test_scanner_cost_is_a_search_per_chunk() -> None:
    scanner = ProgressScanner()
    chunk = b"y\n" * 32768  # what `yes` writes: no progress anywhere
    for _ in range(200):  # 12.5 MiB
        assert scanner.feed(chunk) is None


def test_a_log_rotating_faster_than_it_can_be_read_is_unavailable_not_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymgr.tasks.logreader as logs

    (tmp_path / "3.log.0").write_bytes(b"x")
    reader = LogReader(tmp_path)
    real_stat = Path.stat

    def vanishing(self: Path, **kwargs: object) -> os.stat_result:
        if self.name == "3.log.0":  # the newest rotated file is gone at every look: rotating non-stop
            raise FileNotFoundError(self)
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", vanishing)
    with pytest.raises(Unavailable, match=r"^the log of task 3 rotates faster than it can be read") as info:
        reader.span(3)
    assert info.value.details == {"id": 3} and logs._RETRIES == 50
    with pytest.raises(Unavailable):
        reader.read(3, 0, 10)


def test_adopts_sharing_one_listing_resume_each_run_as_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymgr.keeper.adoption import Listings

    for task_id in (1, 2, 3):  # three dead keeper's logs: 1, 2 and 3 rotations (keep=2: 3 has one too many)
        RunLog(str(tmp_path), task_id, max_bytes=10, keep=3, timestamps=False).write(
            b"x" * (10 * task_id + task_id)
        )
    expected = {1: (10, 1), 2: (20, 2), 3: (30, 3)}
    listed = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda directory: listed.append(directory) or real(directory))
    shared = Listings()
    logs = {
        i: RunLog.resume(str(tmp_path), i, max_bytes=10, keep=2, timestamps=False, listdir=shared)
        for i in (1, 2, 3)
    }
    assert listed == [str(tmp_path)]  # one listing for the three
    assert {i: (log.base, log.size) for i, log in logs.items()} == expected
    assert "3.log.0" not in real(tmp_path)  # past keep: deleted, as alone
    shared.clear()
    assert shared(str(tmp_path)) != [] and len(listed) == 2  # the next read lists again
    for log in logs.values():
        log.close()
