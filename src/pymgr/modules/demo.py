"""The demo module: what `make run` serves to show the daemon working."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field, SecretStr

from pymgr.core.identity import Identity
from pymgr.core.registry import Module, action

#: Longest demo sleep; enough to watch a graceful shutdown wait for a request.
MAX_SLEEP_S = 60.0
#: Longest text a pretended reboot or password reset takes (it is echoed back and written to the audit log).
MAX_TEXT_CHARS = 200
#: Longest delay a pretended reboot takes: an hour, as an admin's `shutdown -r +60` would give.
MAX_REBOOT_DELAY_S = 3600


class Demo(Module):
    """Demo actions: echo params back, show the caller, sleep; pretend to reboot or to reset a password."""

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
        reason: str = Field(min_length=1, max_length=MAX_TEXT_CHARS),
        delay_s: int = Field(0, ge=0, le=MAX_REBOOT_DELAY_S),
    ) -> dict[str, Any]:
        """Pretend to reboot the machine (nothing happens): an action marked dangerous, which the console
        asks to confirm before it calls."""
        return {"rebooted": False, "would_reboot_in_s": delay_s, "reason": reason}

    @action(dangerous=True)
    async def reset_password(
        self,
        account: str = Field(min_length=1, max_length=MAX_TEXT_CHARS),
        new_password: SecretStr = Field(),
    ) -> dict[str, Any]:
        """Pretend to set an account's password (nothing changes): a dangerous action with a secret
        parameter, which the audit log redacts and the console never shows again."""
        return {"account": account, "changed": False, "password_chars": len(new_password.get_secret_value())}
