"""The demo module: what `make run` serves to show the daemon working."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from pymgr.core.identity import Identity
from pymgr.core.registry import Module, action

#: Longest demo sleep; enough to watch a graceful shutdown wait for a request.
MAX_SLEEP_S = 60.0
#: Longest reason a pretended reboot keeps (it is echoed back and written to the audit log).
MAX_REASON_CHARS = 200


class Demo(Module):
    """Demo actions: echo params back, show the caller, sleep, pretend to reboot."""

    name = "demo"

    @action(read_only=True)
    async def echo(self, **params: Any) -> dict[str, Any]:
        """Return the params exactly as received."""
        return params

    @action(read_only=True)
    async def whoami(self, caller: Identity) -> dict[str, Any]:
        """Return the caller's identity as the daemon sees it (transport, uid, gid, user, groups or key id)."""
        return caller.to_dict()

    @action(allow=["uid:0"], read_only=True)
    async def root_only(self, caller: Identity) -> str:
        """Only root may call this: the action itself requires uid:0, and the policy cannot loosen that."""
        return f"hello root (pid {caller.pid})"

    @action(read_only=True)
    async def sleep(self, seconds: float = Field(1.0, ge=0, le=MAX_SLEEP_S)) -> dict[str, float]:
        """Sleep, then reply: a slow request, to watch shutdown wait for it."""
        await asyncio.sleep(seconds)
        return {"slept_s": seconds}

    @action(dangerous=True)
    async def reboot(
        self,
        reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS),
        delay_s: int = Field(0, ge=0, le=3600),
    ) -> dict[str, Any]:
        """Pretend to reboot the machine (nothing happens): an action marked dangerous, which the console
        asks to confirm before it calls."""
        return {"rebooted": False, "would_reboot_in_s": delay_s, "reason": reason}
