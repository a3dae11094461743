"""What an action may know of the call it serves besides its parameters: whether the caller left.

Rules:
- A transport that can tell when its client goes away sets ``caller_gone``
  for the call's task to an event it sets at that moment (the HTTP
  connection does, per connection). None: this transport cannot tell.
- Nothing is cancelled for the action: an action that should stop when
  its caller leaves (a command with ``cancel_on_disconnect``) waits on the
  event itself, and decides what stopping means.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

__all__ = ["caller_gone"]

#: Set when the caller of the current call has gone away (None: the transport cannot tell).
caller_gone: ContextVar[asyncio.Event | None] = ContextVar("pymgr_caller_gone", default=None)
