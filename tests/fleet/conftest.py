"""A real Redis for the fleet tests, and fleet members: real daemons with a ``[fleet]`` section.

The Redis server listens on a Unix socket in a temporary directory only
(``--port 0``), keeps nothing on disk, and is stopped at the end of the
session; each test starts from an empty database. ``make test`` installs
``redis-server`` when it is missing (SYSTEM_TOOLS in the Makefile).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from pymgr.fleet.client import FleetClient
from pymgr.fleet.keys import keygen, load_private_key
from tests.conftest import BASE_CONFIG, Daemon

#: Seconds Redis gets to answer PING after it was started.
REDIS_START_S = 10.0
#: The signing key every test host trusts; the policy grants ``fleet:console`` what each test needs.
KEY_ID = "console"


class RedisServer:
    """A redis-server on a Unix socket in ``directory``: start, stop, start again (on the same socket)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: `make test` installs it (apt-get install redis-server)")
        argv = [binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"]
        with (self.directory / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_S
        while time.monotonic() < deadline:
            try:
                with redis.Redis(unix_socket_path=str(self.socket)) as client:
                    if client.ping():
                        return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {REDIS_START_S} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """The fleet key pair of the tests: (private key file, public key file)."""
    directory = tmp_path / "keys"
    directory.mkdir()
    return keygen(directory, KEY_ID)


@pytest.fixture
def fleet(redis_url: str, keys: tuple[Path, Path]) -> Iterator[FleetClient]:
    """A submitter signing with the tests' key."""
    with FleetClient(redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0])) as client:
        yield client


def host_config(
    redis_url: str,
    public_key: Path,
    host_id: str,
    tags: tuple[str, ...] = (),
    allow: str = '"tasks.start:*"',
    fleet: str = "lease_s = 3",
) -> str:
    """The tests' daemon config, as fleet member ``host_id``; ``allow``: what ``fleet:console`` may do;
    ``fleet``: more lines of ``[fleet]`` (``lease_s`` among them)."""
    tag_list = ", ".join(f'"{tag}"' for tag in tags)
    return (
        BASE_CONFIG
        + f"""
[fleet]
redis_url = "{redis_url}"
host_id = "{host_id}"
tags = [{tag_list}]
{fleet}
block_s = 0.5
poll_s = 0.05
reconnect_max_s = 0.5

[[fleet.keys]]
id = "{KEY_ID}"
key_file = "{public_key}"

[[policy.rules]]
name = "the fleet's console"
subjects = ["fleet:{KEY_ID}"]
actions = [{allow}]
"""
    )


@pytest.fixture
def start_host(
    start_daemon: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path]
) -> Callable[..., Daemon]:
    """Factory: a fleet member with an id, tags and the policy for ``fleet:console``."""

    def start(
        host_id: str,
        tags: tuple[str, ...] = (),
        allow: str = '"tasks.start:*"',
        url: str = "",
        fleet: str = "lease_s = 3",
    ) -> Daemon:
        config = host_config(url or redis_url, keys[1], host_id, tags, allow, fleet)
        return start_daemon(config, name=host_id)

    return start


@pytest.fixture
def start_hosts(
    start_daemons: Callable[..., list[Daemon]], redis_url: str, keys: tuple[Path, Path]
) -> Callable[..., list[Daemon]]:
    """Factory: several fleet members started at once, ``(host id, tags)`` each, with the same policy for
    ``fleet:console`` (``allow``) and ``fleet`` lines."""

    def start(
        *hosts: tuple[str, tuple[str, ...]], allow: str = '"tasks.start:*"', fleet: str = "lease_s = 3"
    ) -> list[Daemon]:
        configs = [(host_config(redis_url, keys[1], name, tags, allow, fleet), name) for name, tags in hosts]
        return start_daemons(*configs)

    return start
