"""What a value may hold once it is written into a systemd unit file.

A unit file is lines of ``Name=value``. systemd ends a line at LF, CR or NUL
(``read_line_full`` in its ``fileio.c``), joins a line that ends in a
backslash to the next one, strips whitespace around the value, and splits
list-valued directives (``ReadWritePaths=``, ``StateDirectory=``) into words
at whitespace and quotes. A config value holding any of those would become
two values, or a directive of its own: ``socket_group = "root\\nExecStopPost=/bin/id"``
wrote ``ExecStopPost=/bin/id`` as a line of the socket unit.

Rules:
- Every value that comes from outside the code (the config, the command
  line, the interpreter's path) passes through ``unit_value`` before it is
  written, named by the key it came from, so the error names that key.
- The check refuses; it never rewrites a value into something else. Escaping
  ``%`` (specifiers) stays with the directive that expands them: it is
  syntax of that directive, not a property of the value.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories refused anywhere in a value: control characters (LF,
#: CR, NUL, and every other C0/C1 code) and the line and paragraph
#: separators, which some readers of the file (Python's splitlines among
#: them) also take as the end of a line.
_LINE_BREAKING = ("Cc", "Zl", "Zp")
#: What ends a word in a list-valued directive (systemd's extract_first_word).
_WORD_BREAKING = "\"'\\"


class UnitValueError(ValueError):
    """A value cannot be written into a unit as one value; the message names its key."""

    def __init__(self, key: str, value: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}: {value!r}")
        self.key = key
        self.value = value


def unit_value(key: str, value: str, *, word: bool = False) -> str:
    """``value`` unchanged, once checked to stay one value in a unit file.

    Args:
        key: where the value came from, as the error should name it
            (``http.socket_group``, ``--config``).
        value: the text to write after ``Directive=``.
        word: the directive splits its value into words (``ReadWritePaths=``),
            so whitespace, quotes and backslashes are refused too.

    Raises:
        UnitValueError: naming ``key``, what is wrong and the value.
    """
    for index, char in enumerate(value):
        if unicodedata.category(char) in _LINE_BREAKING:
            raise UnitValueError(
                key,
                value,
                f"must not contain control characters (U+{ord(char):04X} at offset {index}): "
                "a unit file would end the line there",
            )
    if value != value.strip():
        raise UnitValueError(key, value, "must not begin or end with whitespace: systemd strips it")
    if value.endswith("\\"):
        raise UnitValueError(
            key, value, "must not end with a backslash: systemd would join the next line to it"
        )
    if word and any(char.isspace() or char in _WORD_BREAKING for char in value):
        raise UnitValueError(
            key,
            value,
            "must not contain spaces, quotes or backslashes: systemd splits this directive's value there",
        )
    return value
