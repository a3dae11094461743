"""Which parameter a JSON Schema marks secret: the audit log writes it as ``"[redacted]"`` and the web
console neither shows it nor writes it back into a page, by this one test, so the two never disagree.

A property is secret when it says ``format: password`` (pydantic ``SecretStr``), ``writeOnly: true``
or ``"secret": true`` (``json_schema_extra={"secret": True}``), itself or in any of its ``anyOf``,
``oneOf`` or ``allOf`` options (``SecretStr | None``).

Standard library only: the console, which imports nothing of the daemon, shares it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_secret(schema: Mapping[str, Any]) -> bool:
    """Whether the property's JSON Schema marks it secret (module docstring)."""
    if schema.get("format") == "password" or schema.get("writeOnly") is True or schema.get("secret") is True:
        return True
    options = (s for key in ("anyOf", "oneOf", "allOf") for s in schema.get(key, ()))
    return any(is_secret(s) for s in options if isinstance(s, Mapping))
