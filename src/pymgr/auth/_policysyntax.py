"""The policy's vocabulary: subjects, operations and action patterns, parsed and matched.

``auth/policy.py`` compiles rules from these and decides; this file only
says what each word means (docs/security.md, "Policy", is the same in prose):

- Subjects: ``user:NAME``, ``uid:N``, ``group:NAME`` (Unix-socket callers),
  ``key:ID``, ``cert:CN``, ``fleet:ID`` (a fleet job signed with that key), ``legacy``, ``owner`` (the daemon's own uid on the
  Unix socket) and ``any`` (every caller but a legacy one); for a person a
  delegate acts for (``auth/delegation.py``), ``NAMESPACE:NAME`` (a delegate's
  namespace) and ``role:NAME``, and nothing else: a person never matches the
  delegate's own subjects, ``owner`` or ``any``.
- Patterns: fnmatch-style over operation names, case-sensitive;
  ``PATTERN:read`` matches read-only operations only; ``tasks.start:TYPE``,
  ``tasks.stop:TYPE``, ``tasks.logs:TYPE`` name a task type. An *explicit*
  operation (``@action(explicit=True)``: ``audit.read``) is matched only by a
  pattern whose module part is its module, written out (``audit.read``,
  ``audit.*``): ``*``, ``*:read`` or ``a*.*`` never grant it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pymgr.core.identity import Identity

__all__ = [
    "NAMESPACE_PATTERN",
    "RESERVED_KINDS",
    "SUBJECT_HELP",
    "TYPED_TASK_OPS",
    "Operation",
    "Pattern",
    "Subject",
    "describe_identity",
    "parse_pattern",
    "parse_subject",
    "subject_matches",
    "unknown_key",
]

SUBJECT_HELP = (
    "user:NAME, uid:N, group:NAME, key:ID, cert:CN, fleet:ID, legacy, owner, any, role:NAME "
    "or NAMESPACE:NAME (a [[policy.delegates]] namespace)"
)
#: Task operations that name a task type after the colon.
TYPED_TASK_OPS = ("tasks.start", "tasks.stop", "tasks.logs")
#: Characters a pattern may hold: names, dots, colons and fnmatch's own.
_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9_.\-*?\[\]!:]+$")


# --- subjects ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """One parsed subject: ``kind`` and its value (None for bare kinds)."""

    kind: str
    value: str | int | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


_BARE = frozenset({"legacy", "owner", "any"})
_NAMED = frozenset({"user", "uid", "group", "key", "cert", "fleet", "role"})
#: Every kind the policy itself names: a delegate's namespace may be none of these.
RESERVED_KINDS = _BARE | _NAMED
#: A delegate's namespace: a short lower-case word, so ``console:alice`` reads as one.
NAMESPACE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


def parse_subject(text: str, namespaces: frozenset[str] | None = frozenset()) -> Subject:
    """Parse ``user:NAME``, ``uid:N``, ... or a bare kind.

    Args:
        namespaces: the delegates' namespaces, whose ``NAMESPACE:NAME`` are persons; None accepts any
            well-formed namespace (the config's field check, before the delegates are known).

    Raises:
        ValueError: an unknown kind, an empty name or a uid that is not a number.
    """
    if text in _BARE:
        return Subject(text)
    kind, sep, value = text.partition(":")
    known = kind in _NAMED or (
        _NAMESPACE.match(kind) is not None and (namespaces is None or kind in namespaces)
    )
    if not sep or not known:
        raise ValueError(f"unknown subject {text!r}; subjects are {SUBJECT_HELP}")
    if not value or value != value.strip():
        raise ValueError(f"subject {text!r} needs a name after {kind!r}:, without spaces")
    if kind == "uid":
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"subject {text!r}: uid must be a number, like uid:33")
        return Subject(kind, int(value))
    return Subject(kind, value)


def subject_matches(subject: Subject, identity: Identity, owner_uid: int) -> bool:
    """Whether ``identity`` is ``subject``."""
    kind, value = subject.kind, subject.value
    if identity.person is not None:  # the person a delegate acts for: only its own names
        return (kind == "role" and value in identity.roles) or (
            kind not in RESERVED_KINDS and identity.person == f"{kind}:{value}"
        )
    unix = identity.transport == "unix"
    if kind == "any":
        return unix or identity.key_id is not None or identity.cert is not None
    if kind == "legacy":
        return identity.transport == "legacy"
    if kind == "owner":
        return unix and identity.uid == owner_uid
    if kind == "user":
        return unix and identity.user == value
    if kind == "uid":
        return unix and identity.uid == value
    if kind == "group":
        return unix and value in identity.groups
    if kind == "key":
        return identity.key_id == value
    if kind == "fleet":  # never ``any``: a fleet job gets only what a rule grants its key by name
        return identity.transport == "fleet" and identity.fleet_key == value
    return kind == "cert" and identity.cert == value  # role and NAMESPACE:NAME: persons only


#: Where the keys a ``key:`` or ``fleet:`` subject names are configured.
_KEY_TABLES = {"key": "[[auth.keys]]", "fleet": "[[fleet.keys]]"}


def unknown_key(subject: Subject, key_ids: Mapping[str, frozenset[str]]) -> str | None:
    """Why ``subject`` names no configured key (``key:ID`` or ``fleet:ID``), or None when it does or is no key."""
    known_ids = key_ids.get(subject.kind)
    if known_ids is None or subject.value in known_ids:
        return None
    known = ", ".join(sorted(known_ids)) or "(none)"
    return f"subject '{subject}' names no key in {_KEY_TABLES[subject.kind]}; keys: {known}"


def describe_identity(identity: Identity) -> str:
    """The caller in a message: ``user:www-data (uid 33)``, ``key:ci``, ``console:alice (...)``."""
    if identity.person is not None:
        roles = "".join(f" role:{role}" for role in identity.roles)
        delegate = describe_identity(replace(identity, person=None, roles=()))
        return f"{identity.person}{roles} (through the delegate {delegate})"
    if identity.transport == "unix":
        name = f"user:{identity.user}" if identity.user else f"uid:{identity.uid}"
        return f"{name} (uid {identity.uid})"
    if identity.fleet_key is not None:
        return f"fleet:{identity.fleet_key} ({identity.peer or 'a fleet job'})"
    parts = [f"key:{identity.key_id}"] if identity.key_id else []
    parts += [f"cert:{identity.cert}"] if identity.cert else []
    if parts:
        return " ".join(parts)
    return f"{identity.transport} caller {identity.peer or '(unknown address)'}"


# --- patterns and operations ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """What a call does, as the policy names it (``tasks.start:scan``)."""

    name: str
    read_only: bool
    #: Matched only by a pattern naming its module (``Pattern.module``), never by a wildcard over modules.
    explicit: bool = False


@dataclass(frozen=True, slots=True)
class Pattern:
    """One parsed action pattern."""

    text: str
    glob: str
    read_only: bool
    #: The module the pattern names literally (``audit`` in ``audit.*``); None when a wildcard covers it.
    module: str | None = None

    def matches(self, op: Operation) -> bool:
        if op.explicit and (self.module is None or op.name.partition(".")[0] != self.module):
            return False
        return (op.read_only or not self.read_only) and fnmatch.fnmatchcase(op.name, self.glob)


def parse_pattern(text: str) -> Pattern:
    """Parse ``module.action``, ``PATTERN:read`` or ``tasks.start:TYPE``.

    Raises:
        ValueError: the pattern cannot match anything meaningful; the message
            says what to write instead.
    """
    if not _PATTERN_CHARS.match(text):
        raise ValueError(f"action pattern {text!r} has characters other than names, '.', ':' and * ? [ ] !")
    head, sep, tail = text.partition(":")
    if sep and head in TYPED_TASK_OPS:
        if not tail:
            raise ValueError(
                f"action pattern {text!r} needs a task type after the colon, or * for every type"
            )
        return Pattern(text, text, read_only=False)
    if sep:
        if tail != "read" or not head:
            raise ValueError(
                f"action pattern {text!r}: after ':' only 'read' may follow (PATTERN:read, read-only actions), "
                f"except in {', '.join(t + ':TYPE' for t in TYPED_TASK_OPS)}"
            )
        _check_plain(text, head)
        return Pattern(text, head, read_only=True, module=_literal_module(head))
    _check_plain(text, head)
    return Pattern(text, head, read_only=False, module=_literal_module(head))


def _literal_module(glob: str) -> str | None:
    """The module part of ``module.action`` when written without a wildcard, else None."""
    module, sep, _ = glob.partition(".")
    return module if sep and module and not any(c in module for c in "*?[]!") else None


def _check_plain(text: str, glob: str) -> None:
    if glob in TYPED_TASK_OPS:
        raise ValueError(
            f"action pattern {text!r} needs a task type: write {glob}:TYPE, or {glob}:* for every type"
        )
    if glob in ("tasks.list", "tasks.show", "tasks.counts", "tasks.types"):
        raise ValueError(f"action pattern {text!r}: task reads are one operation; write tasks.read")
    if "." not in glob and glob.strip("*") != "":
        raise ValueError(
            f"action pattern {text!r} names no action: write {glob}.* for every action of module {glob!r}"
        )
