"""Start-up warnings about a policy's subjects: names this host lacks, rules that name a delegate itself.

Each function takes a rule's label and its parsed subjects and returns the
notes to log (``Policy.startup_notes``); none of them changes a decision.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Sequence

from pymgr.auth._policysyntax import Subject, parse_subject
from pymgr.auth.policyconfig import DelegateConfig

__all__ = ["delegate_notes", "unknown_name_notes"]


def unknown_name_notes(label: str, subjects: Sequence[Subject]) -> list[str]:
    """A ``user:``/``group:`` that names no one on this host (configs travel between hosts)."""
    notes = []
    for subject in subjects:
        lookup = {"user": pwd.getpwnam, "group": grp.getgrnam}.get(subject.kind)
        if lookup is None:
            continue
        try:
            lookup(str(subject.value))
        except KeyError:
            notes.append(f"{label}: subject '{subject}' names no {subject.kind} on this host (yet)")
    return notes


def delegate_notes(label: str, subjects: Sequence[Subject], delegates: Sequence[DelegateConfig]) -> list[str]:
    """A rule naming a delegate's own user (by name, uid or a group of it): what it gives the delegate itself."""
    notes = []
    for delegate in delegates:
        names = _names_of(parse_subject(delegate.subject))
        named = [str(s) for s in subjects if str(s) in names]
        if not named:
            continue
        if delegate.own_calls:
            notes.append(
                f"{label} names {', '.join(named)}, the delegate {delegate.subject} itself (own_calls = true): "
                "it may call those actions without a person, and so may anyone who takes it over; "
                "give a delegate a user of its own and its people rules of their own"
            )
        else:
            notes.append(
                f"{label} names {', '.join(named)}, the delegate {delegate.subject} itself: its calls without "
                "a person are refused (own_calls = false), so this rule gives it nothing"
            )
    return notes


def _names_of(delegate: Subject) -> set[str]:
    """The subjects that name the delegate's user on this host: user, uid and its groups."""
    try:
        entry = (
            pwd.getpwuid(int(delegate.value))  # type: ignore[arg-type]  # uid:N holds an int
            if delegate.kind == "uid"
            else pwd.getpwnam(str(delegate.value))
        )
    except KeyError:  # no such user here (yet): only the subject as written names it
        return {str(delegate)}
    groups = {g.gr_name for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    groups.add(_group_name(entry.pw_gid))
    return {str(delegate), f"user:{entry.pw_name}", f"uid:{entry.pw_uid}", *(f"group:{g}" for g in groups)}


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
