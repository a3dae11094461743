"""The token bucket (a pure function), the limiter's memory bound, and loading key files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pymgr.auth.keys import KeyLoadError, load_keys
from pymgr.auth.ratelimit import Bucket, RateLimiter, take
from pymgr.auth.settings import AuthConfig, KeyConfig


@pytest.mark.parametrize(
    ("bucket", "now", "expected", "wait"),
    [
        (None, 0.0, (4.0, 0.0), 0.0),  # a new caller starts full
        ((1.0, 0.0), 0.0, (0.0, 0.0), 0.0),  # the last token
        ((0.0, 0.0), 0.0, (0.0, 0.0), 0.5),  # none left: wait 1 token / 2 per s
        ((0.0, 0.0), 0.25, (0.5, 0.25), 0.25),  # half a token back
        ((0.0, 0.0), 0.5, (0.0, 0.5), 0.0),  # exactly one back
        ((0.0, 0.0), 100.0, (4.0, 100.0), 0.0),  # refill stops at burst (5 - 1)
        ((2.0, 10.0), 5.0, (1.0, 5.0), 0.0),  # clock went back: no refill, no error
    ],
)
def test_take_is_a_pure_function_of_state_and_time(
    bucket: Bucket | None, now: float, expected: Bucket, wait: float
) -> None:
    assert take(bucket, now, rate_per_s=2.0, burst=5) == (expected, pytest.approx(wait))


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_burst_then_rate_both_sides() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=10, burst=3, clock=clock)
    assert [limiter.check("uid:33") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("uid:33") == pytest.approx(0.1)
    assert limiter.check("uid:0") == 0.0  # another caller has its own bucket
    clock.now = 0.1
    assert limiter.check("uid:33") == 0.0
    assert limiter.check("uid:33") > 0


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=1, burst=2, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        limiter.check(key)
    assert len(limiter) == 3
    limiter.check("d")  # all in use: the oldest ("a") goes
    assert len(limiter) == 3
    clock.now = 10.0  # every bucket is full again: all can go
    limiter.check("e")
    assert len(limiter) == 1
    with pytest.raises(ValueError, match=r"^rate_per_s, burst and max_keys must be positive, not 0, 1, 1$"):
        RateLimiter(0, 1, max_keys=1)


def key_file(tmp_path: Path, content: bytes = b"0123456789abcdef0123\n", mode: int = 0o600) -> Path:
    path = tmp_path / "ci.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def config(path: Path) -> AuthConfig:
    return AuthConfig(keys=[KeyConfig(id="ci", secret_file=path), KeyConfig(id="inline", secret="x" * 16)])


def test_keys_from_file_and_inline(tmp_path: Path) -> None:
    assert load_keys(config(key_file(tmp_path))) == {"ci": b"0123456789abcdef0123", "inline": b"x" * 16}
    assert load_keys(config(key_file(tmp_path, mode=0o400)))["ci"] == b"0123456789abcdef0123"


@pytest.mark.parametrize(
    ("mode", "content", "message"),
    [
        (0o640, b"0123456789abcdef", r"has mode 0640: group or others may read it; run chmod 600 .*ci\.key$"),
        (0o604, b"0123456789abcdef", r"has mode 0604: group or others may read it"),
        (0o600, b"short\n", r"holds 5 bytes; a secret must be at least 16 bytes$"),
    ],
)
def test_bad_key_files_stop_start_up(tmp_path: Path, mode: int, content: bytes, message: str) -> None:
    path = key_file(tmp_path, content, mode)
    with pytest.raises(KeyLoadError, match=rf"^\[\[auth\.keys\]\] 'ci': secret_file {path} {message}"):
        load_keys(config(path))


def test_missing_and_symlinked_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match=r"cannot be opened: No such file or directory$"):
        load_keys(config(tmp_path / "nope"))
    link = tmp_path / "link.key"
    link.symlink_to(key_file(tmp_path))
    with pytest.raises(KeyLoadError, match=r"cannot be opened: Too many levels of symbolic links$"):
        load_keys(config(link))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another owner")
def test_a_key_file_owned_by_someone_else(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    os.chown(path, 33, 33)
    with pytest.raises(KeyLoadError, match=r"is owned by uid 33, not by the daemon's uid 0; run chown 0 "):
        load_keys(config(path))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": "ci"}, r"key 'ci': set exactly one of `secret` or `secret_file`"),
        ({"id": "ci", "secret": "x" * 16, "secret_file": "/k"}, r"key 'ci': set exactly one of"),
        ({"id": "ci", "secret": "short"}, r"key 'ci': secret must be at least 16 bytes long"),
        ({"id": "bad id", "secret": "x" * 16}, r"id\n  String should match pattern"),
    ],
)
def test_key_config_errors(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyConfig(**fields)  # type: ignore[arg-type]


def test_duplicate_key_ids() -> None:
    with pytest.raises(ValueError, match=r"key id 'ci' is declared twice in \[\[auth\.keys\]\]"):
        AuthConfig(keys=[KeyConfig(id="ci", secret="x" * 16), KeyConfig(id="ci", secret="y" * 16)])


@pytest.mark.parametrize("rate_per_s", [2.0, 0.5])
def test_the_limiter_answers_as_take_does_step_by_step(rate_per_s: float) -> None:
    # check() inlines take() for a known caller with a token left; both must agree on every step,
    # the clock going backwards and the refill stopping at the burst included.
    clock = Clock()
    limiter = RateLimiter(rate_per_s=rate_per_s, burst=3, clock=clock)
    bucket: Bucket | None = None
    for now in (0.0, 0.0, 0.1, 0.2, 0.2, 0.1, 0.9, 1.7, 1.7, 1.7, 1.7, 50.0, 50.0, 49.0, 50.5):
        clock.now = now
        bucket, wait = take(bucket, now, rate_per_s, 3)
        assert limiter.check("uid:33") == pytest.approx(wait)
        assert limiter._buckets["uid:33"] == pytest.approx(bucket)
