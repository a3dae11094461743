"""Peer credentials of real Unix socket pairs: the kernel's uid, gid and pid, one Identity object per caller."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from pymgr.auth.peercred import identity_from_peercred


def test_the_kernel_names_this_process_and_a_caller_keeps_one_identity_object() -> None:
    first, peer1 = socket.socketpair(socket.AF_UNIX)
    second, peer2 = socket.socketpair(socket.AF_UNIX)
    with first, peer1, second, peer2:
        identity = identity_from_peercred(first)
        assert identity is not None
        assert (identity.transport, identity.uid, identity.gid, identity.pid) == (
            "unix",
            os.getuid(),
            os.getgid(),
            os.getpid(),
        )
        # A second connection from the same process: the same object, so caches keyed by it hit.
        assert identity_from_peercred(second) is identity


def test_another_process_gets_its_own_identity() -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind("\0pymgr-test-peercred-%d" % os.getpid())
    listener.listen(1)
    with listener:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket,sys,time; s=socket.socket(socket.AF_UNIX); "
                f"s.connect({listener.getsockname()!r}); time.sleep(5)",
            ]
        )
        try:
            conn, _ = listener.accept()
            with conn:
                identity = identity_from_peercred(conn)
        finally:
            child.kill()
            child.wait()
    assert identity is not None and identity.pid == child.pid and identity.uid == os.getuid()


def test_a_tcp_socket_has_no_peer_credentials() -> None:
    with socket.socket(socket.AF_INET) as sock:
        assert identity_from_peercred(sock) is None
    assert identity_from_peercred(None) is None


def test_names_are_kept_until_their_age_then_read_again_and_a_clear_drops_them() -> None:
    from pymgr.auth.peercred import _Callers

    now = [0.0]
    callers = _Callers(max_age_s=60.0, clock=lambda: now[0])
    first = callers.get(100, os.getuid(), os.getgid())
    now[0] = 59.9
    assert callers.get(100, os.getuid(), os.getgid()) is first  # fresh: the same object
    now[0] = 60.0
    second = callers.get(100, os.getuid(), os.getgid())
    assert second is not first and second == first  # at the age: resolved again
    callers.clear()
    assert callers.get(100, os.getuid(), os.getgid()) is not second


def test_current_gives_a_kept_alive_connection_fresh_names_after_forget_names() -> None:
    from pymgr.auth.peercred import current, forget_names

    one, two = socket.socketpair(socket.AF_UNIX)
    with one, two:
        identity = identity_from_peercred(one)
        assert identity is not None and current(identity) is identity
        forget_names()  # what SIGHUP does
        refreshed = current(identity)
        assert refreshed is not identity and refreshed == identity
        assert current(identity) is refreshed and identity_from_peercred(two) is refreshed


def test_the_age_must_be_positive() -> None:
    import pytest

    from pymgr.auth.peercred import set_names_max_age

    with pytest.raises(ValueError, match=r"^groups_max_age_s must be positive, not 0$"):
        set_names_max_age(0)
