"""The 2014 design's request signature: hex HMAC-MD5 of the module name.

It is what Python 2's ``hmac.new(key, module_name).hexdigest()`` gave (MD5
was ``hmac.new``'s default digest there). Kept only so old clients keep
working, and with its flaws in plain sight:

- It signs the module name only, not the action, the parameters or a time:
  one signature per module, the same for ever. Anyone who sees one request
  can replay it, with any action and parameters. The legacy listener is
  therefore opt-in, on loopback by default, and logs a warning at start.
- The comparison is constant-time (``hmac.compare_digest``), and the hex is
  case-insensitive, so an attacker learns nothing from how long a wrong
  signature took to refuse.

Secrets and module names are encoded as UTF-8 (Python 2 passed byte
strings; for ASCII names, the usual case, the bytes are the same).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["PUBLISHED_SECRET", "legacy_signature", "verify_legacy_signature"]

#: The 2014 design's secret, published with its source: the demo uses it so old
#: clients work unchanged, and the daemon warns loudly whenever it is configured.
PUBLISHED_SECRET = "YI-LUO-KEHAN"


def legacy_signature(secret: str, module: str) -> str:
    """The signature an old client sends for ``module``: lower-case hex, 32 chars."""
    return hmac.new(secret.encode("utf-8"), module.encode("utf-8"), hashlib.md5).hexdigest()


def verify_legacy_signature(secret: str, module: str, signature: str) -> bool:
    """Whether ``signature`` is the legacy signature of ``module`` under ``secret``.

    Upper- or lower-case hex both match; the comparison takes the same time
    wherever the first wrong character is.
    """
    expected = legacy_signature(secret, module).encode("ascii")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a peer may send any text.
    return hmac.compare_digest(expected, signature.strip().lower().encode("utf-8"))
