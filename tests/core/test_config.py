from __future__ import annotations

import os
from pathlib import Path

import pytest

from pymgr.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_demo_config_loads_with_paths_relative_to_the_file() -> None:
    config = load_config(REPO / "examples" / "demo.toml")
    assert config.http.unix_socket == REPO / "var" / "pymgr.sock"
    assert config.http.socket_mode == 0o660
    assert config.state_dir == REPO / "var" / "state"
    assert config.legacy.enabled and config.legacy.port == 6667
    assert config.legacy.secret is not None and config.legacy.secret.get_secret_value() == "YI-LUO-KEHAN"
    assert config.tasks.types["scan"].cwd == REPO / "examples"
    assert "YI-LUO" not in repr(config)  # the secret never lands in a log line


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    config = load_config(path)
    assert config.http.unix_socket == Path("/run/pymgr/pymgr.sock")
    assert config.legacy.enabled is False and config.legacy.host == "127.0.0.1"
    assert config.modules.enabled == ["tasks"]


def test_unix_socket_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http]\nunix_socket = ""\ntcp = "127.0.0.1:0"\n')
    assert load_config(path).http.unix_socket is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[http]\nsocket_mode = "rw"\n',
            r"http\.socket_mode: Value error, must be an octal mode such as \"0660\", not 'rw'",
        ),
        ("[http]\nsocket_mode = 0o1777\n", r"http\.socket_mode: Input should be less than or equal to 511"),
        ('[http]\ntcp = "localhost"\n', r"http\.tcp: Value error, must be \"host:port\""),
        ("[legacy]\nport = 70000\n", r"legacy\.port: Input should be less than or equal to 65535"),
        (
            "[legacy]\nmax_line_bytes = 1\n",
            r"legacy\.max_line_bytes: Input should be greater than or equal to 16",
        ),
        ("bogus = 1\n", r"bogus: Extra inputs are not permitted"),
        ("[tasks.types.x]\nargv = []\n", r"tasks\.types\.x\.argv: List should have at least 1 item"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^config {path} is invalid:\n(.|\n)*{message}"):
        load_config(path)


def test_an_audit_page_must_hold_the_largest_record(tmp_path: Path) -> None:
    """read_max_scan_bytes >= max_params_bytes + 64 KiB of the line's other fields, both sides of it."""
    path = tmp_path / "c.toml"
    path.write_text("[audit]\nread_max_scan_bytes = 196608\n[limits]\nmax_params_bytes = 131072\n")
    assert load_config(path).audit.read_max_scan_bytes == 128 * 1024 + 64 * 1024
    path.write_text("[audit]\nread_max_scan_bytes = 196607\n[limits]\nmax_params_bytes = 131072\n")
    with pytest.raises(
        ConfigError,
        match=r"\[audit\] read_max_scan_bytes=196607 is less than \[limits\] max_params_bytes=131072 plus 65536 "
        r"bytes of the line's other fields: a record of the largest params could be read by no page; raise it "
        r"to at least 196608",
    ):
        load_config(path)
    path.write_text("[audit]\nread_max_scan_bytes = 65536\n")  # the floor, with the default params limit
    with pytest.raises(ConfigError, match=r"raise it to at least 131072$"):
        load_config(path)


def test_unreadable_and_non_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read config .*missing\.toml: No such file or directory$"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[x\n")
    with pytest.raises(ConfigError, match=r"^config .*bad\.toml is not valid TOML: "):
        load_config(bad)


def test_relative_paths_are_made_absolute_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "auditdir").symlink_to(tmp_path / "real")
    config = tmp_path / "pymgr.toml"
    config.write_text('state_dir = "state/../st"\n[audit]\npath = "auditdir/audit.log"\n')
    loaded = load_config(config)
    assert loaded.audit.path == tmp_path / "auditdir" / "audit.log"
    assert loaded.state_dir == tmp_path / "st"


def test_a_config_in_a_sticky_world_writable_directory_of_ours_loads(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "pymgr.toml").write_text('state_dir = "state"\n')
    assert load_config(sticky / "pymgr.toml").state_dir == sticky / "state"


def test_a_group_writable_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "pymgr.toml"
    config.write_text('state_dir = "state"\n')
    if os.geteuid() == 0:
        os.chown(config, -1, 65534)
    if config.stat().st_gid == 0:
        pytest.skip("group root is trusted and the file cannot get another group here")
    config.chmod(0o664)
    with pytest.raises(ConfigError, match=rf"^config refused: {config} is writable by group"):
        load_config(config)


def test_public_secrets_accepts_a_readable_config(tmp_path: Path) -> None:
    config = tmp_path / "pymgr.toml"
    config.write_text('[legacy]\nsecret = "s"\n')
    config.chmod(0o644)
    with pytest.raises(ConfigError, match=r"holds secrets inline \(legacy.secret\) and has mode 0644"):
        load_config(config)
    config.write_text('[legacy]\nsecret = "s"\n[security]\npublic_secrets = true\n')
    assert load_config(config).security.public_secrets
