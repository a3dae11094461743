"""The security settings of the config: world-writable sockets, TLS, commands, audit path; and the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymgr.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("http", "ok"),
    [
        ('socket_mode = "0660"', True),
        ('socket_mode = "0664"', True),  # others may read the file; connecting needs write
        ('socket_mode = "0662"', False),
        ('socket_mode = "0666"', False),
        ('socket_mode = "0666"\nallow_world_writable = true', True),
        ('unix_socket = ""\ntcp = "127.0.0.1:0"\nsocket_mode = "0666"', True),  # no socket file at all
    ],
)
def test_world_writable_socket_both_sides(tmp_path: Path, http: str, ok: bool) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[http]\n{http}\n")
    if ok:
        load_config(path)
    else:
        with pytest.raises(
            ConfigError,
            match=r"http\.socket_mode: Value error, \"066\d\" lets every local user write "
            r"to the socket and call pymgr; .* \(line 2\)$",
        ):
            load_config(path)


def test_relative_security_paths_are_resolved_against_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'state_dir = "st"\n[http]\ntcp = "127.0.0.1:0"\n[http.tls]\ncertfile = "tls/s.pem"\nkeyfile = "tls/s.key"\n'
        'client_ca = "tls/ca.pem"\n[[auth.keys]]\nid = "k"\nsecret_file = "keys/k"\n'
        '[commands.x]\nargv = ["/bin/true"]\ncwd = "work"\n'
    )
    config = load_config(path)
    assert config.http.tls is not None and config.http.tls.certfile == tmp_path / "tls" / "s.pem"
    assert config.http.tls.client_ca == tmp_path / "tls" / "ca.pem"
    assert config.auth.keys[0].secret_file == tmp_path / "keys" / "k"
    assert config.audit.path == tmp_path / "st" / "audit.log"
    assert config.commands["x"].cwd == tmp_path / "work"


def test_require_client_cert_needs_a_ca(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http.tls]\ncertfile = "s.pem"\nkeyfile = "s.key"\nrequire_client_cert = true\n')
    with pytest.raises(ConfigError, match=r"require_client_cert = true needs client_ca"):
        load_config(path)


def test_the_demo_config_shows_the_whole_model() -> None:
    config = load_config(REPO / "examples" / "demo.toml")
    assert config.http.socket_group == "www-data" and config.http.socket_group_required is False
    assert config.http.tcp == "127.0.0.1:6668" and [k.id for k in config.auth.keys] == ["demo"]
    rules = {rule.name: rule for rule in config.policy.rules}
    assert rules["web back end"].subjects == ["group:www-data"]
    assert rules["web back end"].actions == [
        "demo.*",
        "SCAN_MODULE.*",
        "tasks.read",
        "tasks.start:scan",
        "tasks.stop:scan",
        "tasks.logs:scan",
    ]
    assert rules["legacy clients"].actions == ["SCAN_MODULE.*", "demo.echo"]
    assert rules["you"].subjects == ["owner"] and not any(rule.override for rule in rules.values())
