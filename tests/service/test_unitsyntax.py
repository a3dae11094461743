"""What a value may hold in a unit file: one value, on one line, whatever the config says."""

from __future__ import annotations

import pytest

from pymgr.service._unitsyntax import UnitValueError, unit_value


@pytest.mark.parametrize(
    "value", ["/run/pymgr/pymgr.sock", "www-data", "/srv/50%", "AF_UNIX AF_INET", "~CAP_SYS_PACCT", "é/ü"]
)
def test_ordinary_values_pass_unchanged(value: str) -> None:
    assert unit_value("k", value) == value


@pytest.mark.parametrize(
    ("value", "code", "offset"),
    [
        ("root\nExecStopPost=/bin/id", "000A", 4),
        ("a\rb", "000D", 1),
        ("a\x00b", "0000", 1),
        ("a\x0bb", "000B", 1),
        ("a\x7fb", "007F", 1),
        ("a\x85b", "0085", 1),
        ("a\u2028b", "2028", 1),
        ("\tx", "0009", 0),
    ],
)
def test_control_characters_are_refused_naming_the_key(value: str, code: str, offset: int) -> None:
    with pytest.raises(
        UnitValueError,
        match=rf"^http\.socket_group: must not contain control characters \(U\+{code} at offset {offset}\): "
        r"a unit file would end the line there: ",
    ) as caught:
        unit_value("http.socket_group", value)
    assert (caught.value.key, caught.value.value) == ("http.socket_group", value)


def test_a_value_systemd_would_strip_or_join_is_refused() -> None:
    with pytest.raises(
        UnitValueError, match=r"^k: must not begin or end with whitespace: systemd strips it: ' x'$"
    ):
        unit_value("k", " x")
    with pytest.raises(
        UnitValueError, match=r"^k: must not begin or end with whitespace: systemd strips it: 'x '$"
    ):
        unit_value("k", "x ")
    with pytest.raises(
        UnitValueError,
        match=r"^k: must not end with a backslash: systemd would join the next line to it: 'x\\\\'$",
    ):
        unit_value("k", "x\\")


@pytest.mark.parametrize("value", ["/a b", '/a"b', "/a'b", "/a\\b", "/a\u00a0b"])
def test_a_word_holds_no_separator(value: str) -> None:
    assert unit_value("k", value) == value
    with pytest.raises(UnitValueError, match=r"^k: must not contain spaces, quotes or backslashes: "):
        unit_value("k", value, word=True)
