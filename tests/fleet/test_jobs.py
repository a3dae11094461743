"""The job codec: what hosts sign, decode and believe (fleet/jobs.py), table-tested and fuzzed."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from pymgr.fleet import jobs
from pymgr.fleet.jobs import MAX_JOB_BYTES, Job, JobRefused, Target

KEY = Ed25519PrivateKey.generate()
KEYS = {"console": KEY.public_key()}
NOW = 1_800_000_000.0
JOB = Job("j1", "task", "scan", {"path": "/srv", "n": 3}, Target("tag", "scanner"), NOW, "console")


def _entry(job: Job = JOB, key: Ed25519PrivateKey = KEY) -> dict[str, bytes]:
    return jobs.encode(job, key.sign)


def _check(entry: dict[str, Any], stream: str = "fleet:tag:scanner", now: float = NOW) -> Job:
    return jobs.check(jobs.decode(entry), KEYS, stream=stream, now=now, max_age_s=300)


def test_a_signed_job_round_trips() -> None:
    assert _check(_entry()) == JOB
    assert _check({k.encode(): v for k, v in _entry().items()}) == JOB  # field names as Redis returns them


def test_the_body_is_canonical_json_and_the_signature_covers_the_context() -> None:
    entry = _entry()
    assert (
        entry["job"] == json.dumps(json.loads(entry["job"]), sort_keys=True, separators=(",", ":")).encode()
    )
    KEY.public_key().verify(base64.b64decode(entry["sig"]), jobs.SIGNING_CONTEXT + entry["job"])


def _body(**changes: Any) -> dict[str, bytes]:
    data = json.loads(_entry()["job"])
    data.update(changes)
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return {"job": body, "sig": base64.b64encode(KEY.sign(jobs.SIGNING_CONTEXT + body))}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"job": b"{}"}, r"^a job entry has the fields job and sig, not \['job'\]$"),
        ({"job": b"[1]", "sig": b""}, r"^a job is an object with .*, not list$"),
        ({"job": b"{", "sig": b""}, r"^the job is not JSON: "),
        (_body(id="a b"), r"^the job id must match "),
        # A trailing newline is no part of a name ($ alone would let it through, and into key names).
        (_body(id="j1\n"), r"^the job id must match "),
        (_body(type="scan\n"), r"^job j1: type must be a task type or module.action "),
        (_body(target="host:a\n"), r"^job j1: target must be host:ID, tag:TAG or ctl:ID$"),
        (_body(key_id="console\n"), r"^job j1: key_id must be a key id$"),
        (_body(v=2), r"^job j1: version 2 is not 1$"),
        (_body(kind="shell"), r"^job j1: kind must be one of task, action, control$"),
        (_body(kind="action", type="demo"), r"^job j1: an action job's type is module.action, not 'demo'$"),
        (_body(params=[1]), r"^job j1: params must be an object$"),
        (_body(target="hosts:a"), r"^job j1: target must be host:ID, tag:TAG or ctl:ID$"),
        (_body(target="host:a:b"), r"^job j1: target must be host:ID, tag:TAG or ctl:ID$"),
        (
            _body(target="ctl:a"),
            r"^job j1: a control job goes to a host's control stream \(ctl:ID\), and nothing",
        ),
        (_body(kind="control", type="stop", params={"job": "j0"}), r"^job j1: a control job goes to"),
        (
            _body(kind="control", type="kill", params={"job": "j0"}, target="ctl:a"),
            r"^job j1: a control job's type is one of stop, not 'kill'$",
        ),
        (
            _body(kind="control", type="stop", params={"job": "a b"}, target="ctl:a"),
            r'^job j1: a stop\'s params are \{"job": ID\}, the id of the job to stop$',
        ),
        (_body(submitted_at=True), r"^job j1: submitted_at must be a number of seconds$"),
        (_body(key_id="a/b"), r"^job j1: key_id must be a key id$"),
        (
            {"job": _entry()["job"] + b" ", "sig": _entry()["sig"]},
            r"^job j1: the job is not in its canonical",
        ),
        ({"job": _entry()["job"], "sig": b"!" * 88}, r"^job j1: the signature is not base64$"),
        ({"job": _entry()["job"], "sig": b"AAAA"}, r"^job j1: the signature is not 64 bytes of base64$"),
    ],
)
def test_malformed_entries_are_refused_saying_what_is_wrong(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(JobRefused, match=message) as caught:
        jobs.decode(entry)
    assert caught.value.reason == "malformed"


def test_the_size_limit_is_explicit_on_both_sides() -> None:
    entry = _entry()
    size = len(entry["job"])
    assert jobs.decode(entry, max_bytes=size).job == JOB
    with pytest.raises(JobRefused, match=rf"^the job is {size} bytes, more than the {size - 1} accepted$"):
        jobs.decode(entry, max_bytes=size - 1)
    assert MAX_JOB_BYTES == 64 * 1024


@pytest.mark.parametrize(
    ("entry", "stream", "now", "reason", "message"),
    [
        (
            _entry(key=Ed25519PrivateKey.generate()),
            "fleet:tag:scanner",
            NOW,
            "bad_signature",
            "does not verify",
        ),
        (
            _entry(Job("j1", "task", "scan", {}, Target("tag", "scanner"), NOW, "other")),
            "fleet:tag:scanner",
            NOW,
            "unknown_key",
            r"names key 'other'; this host knows console$",
        ),
        (
            _entry(),
            "fleet:host:a",
            NOW,
            "wrong_target",
            r"^job j1 is signed for tag:scanner, found in fleet:host:a$",
        ),
        (
            _entry(),
            "fleet:tag:scanner",
            NOW + 300.5,
            "too_old",
            r"^job j1 was signed 300 s ago; at most 300 s either way$",
        ),
        (_entry(), "fleet:tag:scanner", NOW - 301, "too_old", r"was signed 301 s in the future"),
    ],
)
def test_checks_refuse_what_this_host_must_not_believe(
    entry: dict[str, bytes], stream: str, now: float, reason: str, message: str
) -> None:
    with pytest.raises(JobRefused, match=message) as caught:
        _check(entry, stream, now)
    assert (caught.value.reason, caught.value.job_id) == (reason, "j1")


def test_the_age_limit_holds_at_its_edge() -> None:
    assert _check(_entry(), now=NOW + 300) == JOB
    assert _check(_entry(), now=NOW - 300) == JOB


def test_a_tampered_body_does_not_verify() -> None:
    entry = _entry()
    entry["job"] = entry["job"].replace(b"/srv", b"/etc")
    with pytest.raises(JobRefused, match="does not verify"):
        _check(entry)


def test_numbers_json_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError):
        jobs.canonical(Job("j", "task", "t", {"x": math.nan}, Target("host", "a"), NOW, "console"))
    body = _entry()["job"].replace(b'"n":3', b'"n":1e999')
    with pytest.raises(JobRefused, match="out of range"):
        jobs.decode({"job": body, "sig": _entry()["sig"]})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["job", "sig", "x", b"job", b"sig"]), st.binary() | st.text(), max_size=3)
)
def test_the_decoder_refuses_arbitrary_entries_cleanly(entry: dict[Any, Any]) -> None:
    try:
        jobs.decode(entry)
    except JobRefused as exc:
        assert exc.reason in ("malformed", "too_large")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(jobs._FIELDS) + ["extra"]), json_values, max_size=9))
def test_the_decoder_refuses_arbitrary_bodies_cleanly(data: dict[str, Any]) -> None:
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    try:
        signed = jobs.decode({"job": body, "sig": base64.b64encode(b"\0" * 64)})
    except JobRefused as exc:
        assert exc.reason == "malformed"
        return
    assert jobs.canonical(signed.job) == body  # whatever decodes is exactly what was sent


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.sampled_from(["task", "action"]))
def test_every_encodable_job_round_trips(params: dict[str, Any], kind: str) -> None:
    job = Job("j-1", kind, "demo.echo", params, Target("host", "h1"), NOW, "console")  # type: ignore[arg-type]
    assert _check(_entry(job), stream="fleet:host:h1") == job


def test_a_stop_is_checked_as_a_job_and_for_its_control_stream_only() -> None:
    stop = Job("s1", "control", "stop", {"job": "j1"}, Target("ctl", "a"), NOW, "console")
    assert _check(_entry(stop), stream="fleet:ctl:a") == stop
    with pytest.raises(JobRefused, match=r"signed for ctl:a, found in fleet:ctl:b$"):
        _check(_entry(stop), stream="fleet:ctl:b")
    with pytest.raises(JobRefused, match=r"signature does not verify"):
        _check(_entry(stop, Ed25519PrivateKey.generate()), stream="fleet:ctl:a")
