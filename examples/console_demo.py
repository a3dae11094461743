"""Prepare the demo console of `make run`: its directory, and the "demo" account on first run.

The password is generated once (``secrets``), kept in var/console/demo-password (0600) and printed
at every start. Run as root, the directory is given to www-data, the user the console becomes.
"""

from __future__ import annotations

import os
import pwd
import secrets
import sys
from pathlib import Path

from pymgr.console import users

VAR = Path("var/console")
PASSWORD_FILE = VAR / "demo-password"
USERS_FILE = VAR / "users.json"
#: The console's user when started as root (examples/console.toml, user).
CONSOLE_USER = "www-data"


def main() -> int:
    VAR.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not PASSWORD_FILE.exists():
        fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(12) + "\n")
    password = PASSWORD_FILE.read_text().strip()
    if "demo" not in users.load(USERS_FILE):
        users.add(USERS_FILE, "demo", password, ["operators", "auditors"])
    if os.geteuid() == 0:
        entry = pwd.getpwnam(CONSOLE_USER)
        for path in (VAR, PASSWORD_FILE, USERS_FILE):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    else:
        print(
            f"note: examples/demo.toml names user:{CONSOLE_USER} as the console's delegate; run as "
            f"{pwd.getpwuid(os.geteuid()).pw_name}, the console's calls for people are refused (403). "
            "Run make run as root, or change that delegate's subject to your own user:NAME.",
            file=sys.stderr,
        )
    print(f"console: http://127.0.0.1:8765  user: demo  password: {password}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
