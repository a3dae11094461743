"""The ``audit`` module: the daemon's audit log, read back a page at a time (``audit.read``).

Served by every daemon, like any action under the policy: ``audit.read`` is
denied unless a rule allows it (``*:read`` does: it is read-only), and every
read is itself a line of the audit log. The files are read as written,
secrets already redacted (``auth/auditread.py`` has the rules of the scan);
``GET /v1/audit`` is the same call with its filters in the query.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pymgr.auth.auditread import (
    AuditPage,
    AuditQuery,
    AuditReader,
    parse_cursor,
    parse_filter_subject,
    parse_time,
)
from pymgr.auth.settings import AuditConfig
from pymgr.core.registry import Module, action
from pymgr.errors import ParamsInvalid

__all__ = ["AuditModule"]


def _time(text: str) -> str:
    return parse_time(text)


def _subject(text: str) -> str:
    parse_filter_subject(text)
    return text


def _pattern(text: str) -> str:
    if (
        not text
        or len(text) > 200
        or not all(c.isascii() and (c.isalnum() or c in "_.-*?[]!:") for c in text)
    ):
        raise ValueError("an operation pattern like tasks.start:* or demo.*: names, '.', ':' and * ? [ ] !")
    return text


def _cursor(text: str) -> str:
    parse_cursor(text)
    return text


Time = Annotated[str, AfterValidator(_time)]


class AuditModule(Module):
    """Who did what, when, with which parameters: the audit log's records, newest first."""

    name = "audit"

    def __init__(self, config: AuditConfig) -> None:
        super().__init__()
        if config.path is None:
            raise ValueError("the audit path is resolved by load_config; a Config built by hand must set it")
        self.config = config
        self.reader = AuditReader(
            config.path, backups=config.backups, max_scan_bytes=config.read_max_scan_bytes
        )

    @action(read_only=True)
    async def read(
        self,
        since: Time | None = None,
        until: Time | None = None,
        subject: Annotated[str, AfterValidator(_subject)] | None = None,
        action: Annotated[str, AfterValidator(_pattern)] | None = None,
        outcome: Literal["ok", "error", "cancelled"] | None = None,
        limit: Annotated[int | None, Field(ge=1)] = None,
        before: Annotated[str, AfterValidator(_cursor)] | None = None,
    ) -> AuditPage:
        """Records of calls that ran, newest first: those at or after ``since`` and at or before ``until``
        (ISO 8601), of ``subject`` (``user:NAME``, ``uid:N``, ``key:ID``, ``role:NAME``, ``console:alice``,
        ...), whose operation matches ``action`` (``tasks.start:*``), with ``outcome``.

        A page of ``limit`` records at most ([audit] read_limit); ``next`` is the cursor of the next page
        (give it back as ``before``), None on the last. A page may hold fewer records than ``limit`` and
        still have a next one: each reads at most [audit] read_max_scan_bytes.
        """
        query = AuditQuery(
            limit=self._limit(limit),
            since=since,
            until=until,
            subject=None if subject is None else parse_filter_subject(subject),
            action=action,
            outcome=outcome,
            before=None if before is None else parse_cursor(before),
        )
        files = self.reader.open()  # here, between two writes: a rotation cannot move them under the scan
        try:
            return await asyncio.to_thread(self.reader.scan, files, query)
        finally:
            self.reader.close(files)

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.config.read_limit
        if limit > self.config.read_max_limit:
            bound = f"at most {self.config.read_max_limit}"
            raise ParamsInvalid(
                f"bad params for audit.read: limit: {bound} records a page ([audit] read_max_limit), "
                f"not {limit}; ask for the next page with before=<next>",
                details={"errors": [{"field": "limit", "message": bound, "type": "less_than_equal"}]},
            )
        return limit
