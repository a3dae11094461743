"""The shape rules of src/: small files, short functions, and the formatter's output everywhere.

A file over ``MAX_FILE_LINES`` or a function over ``MAX_FUNCTION_LINES`` is a
concept that wants splitting; ``# fmt: skip`` hides a line the formatter would
have made readable. Each test names every violator, so one run lists all the
work.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pymgr

SRC = Path(pymgr.__file__).parent
#: Lines in one source file, docstrings and comments included.
MAX_FILE_LINES = 400
#: Lines in one function or method, from its ``def`` (decorators excluded) to its last line.
MAX_FUNCTION_LINES = 50
FMT_SKIP = "# fmt: skip"


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def test_the_tree_is_found() -> None:
    assert (SRC / "__init__.py").is_file() and len(source_files()) > 10


def test_no_file_is_over_the_line_limit() -> None:
    too_long = {
        relative(path): lines
        for path in source_files()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    }
    assert too_long == {}, f"files over {MAX_FILE_LINES} lines (split them by concept): {too_long}"


def test_no_function_is_over_the_line_limit() -> None:
    too_long = {}
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long[f"{relative(path)}:{node.lineno} {node.name}"] = lines
    assert too_long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_no_line_opts_out_of_the_formatter() -> None:
    skipping = [
        f"{relative(path)}:{number}"
        for path in source_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if FMT_SKIP in line
    ]
    assert skipping == [], f"lines with {FMT_SKIP!r} (restructure the code instead): {skipping}"
