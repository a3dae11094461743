"""What a declared parameter's value may look like as text, and how it reaches argv.

Rules:
- Over JSON a number is a number; over the legacy protocol every value is
  a string. So an ``int`` takes a JSON integer or a decimal string and a
  ``float`` a JSON number or a decimal string, and nothing looser: no
  ``true`` for 1, no surrounding spaces, no ``+``, no ``_``, no hex, no
  ``inf``/``nan``, and an ``int`` takes no fraction (``7.0`` is refused).
- What reaches argv is the value's canonical text, whatever was sent: an
  int in plain decimal (``"007"`` becomes ``7``); a float in fixed
  notation with the fewest digits that read back as the same number,
  never an exponent (``1e-7`` becomes ``0.0000001``), always with a
  fraction (``30`` becomes ``30.0``), never a negative zero (``-0``
  becomes ``0.0``); a bool as ``true``/``false``; an unset optional
  parameter as the empty string.
- A string that starts with ``-`` would reach a program as an option
  (``echo -e``): it is refused unless the parameter says
  ``allow_option = true``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

__all__ = ["argv_text", "float_from_text", "int_from_text", "no_negative_zero", "not_an_option"]

#: A decimal integer as text: an optional minus and ASCII digits, nothing else.
_INT_TEXT = re.compile(r"-?[0-9]+")
#: A decimal number as text: an optional minus, digits with an optional
#: fraction (or a fraction alone), an optional exponent.
_FLOAT_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def int_from_text(value: Any) -> Any:
    """A decimal string as an int; anything else goes on to strict int validation."""
    if not isinstance(value, str):
        return value
    if not _INT_TEXT.fullmatch(value):
        raise ValueError(
            "must be a whole number in decimal digits, like 7 or -7 (no spaces, no '+', no fraction)"
        )
    return int(value)


def float_from_text(value: Any) -> Any:
    """A decimal string as a float; anything else goes on to strict float validation."""
    if not isinstance(value, str):
        return value
    if not _FLOAT_TEXT.fullmatch(value):
        raise ValueError(
            "must be a decimal number, like 2.5, -0.5 or 1e-7 (no spaces, no '+', no inf or nan)"
        )
    return float(value)


def no_negative_zero(value: float) -> float:
    """-0.0 as 0.0: a program told "-0.0" may take it for a negative value, or an option."""
    return 0.0 if value == 0 else value


def not_an_option(value: str) -> str:
    if value.startswith("-"):
        raise ValueError(
            "must not start with '-': a program would take it for an option; "
            "a parameter that expects one says allow_option = true"
        )
    return value


def argv_text(value: Any) -> str:
    """One parameter value as argv text (canonical; see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return _float_text(value)
    return str(value)


def _float_text(value: float) -> str:
    if value == 0:
        return "0.0"
    # repr() is the shortest text that reads back as the same float; Decimal
    # writes it out in fixed notation, where str() and repr() switch to an
    # exponent below 1e-4 and from 1e16 on.
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"
