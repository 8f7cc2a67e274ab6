"""Tokens through the Python client: without the token every op but HELLO is
refused; without the admin token RELOAD/SNAPSHOT/SHUTDOWN are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import perennial


def test_tokens(start_server, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("client-secret-1\n")
    (tmp_path / "admin").write_text("admin-secret-22")
    srv = start_server('[auth]\ntoken_file = "%s"\nadmin_token_file = "%s"\n'
                       % (tmp_path / "token", tmp_path / "admin"))
    host, port = srv.address
    with perennial.Client(host, port, hello=False) as c:
        with pytest.raises(perennial.Unauthorized):
            c.stats()
    with pytest.raises(perennial.Unauthorized):
        perennial.Client(host, port, token="wrong-token-x").ping()
    with perennial.Client(host, port, token="client-secret-1") as c:
        assert c.ping()
        c.feedback([perennial.Event(1, 2)])
        for admin_op in (c.shutdown, c.snapshot, c.reload):
            with pytest.raises(perennial.Unauthorized):
                admin_op()
    with perennial.Client(host, port, token="admin-secret-22") as c:
        assert c.ping()
        assert c.snapshot() == 1  # covers the one event fed above
        c.shutdown()


def test_admin_command_with_tokens(start_server, tmp_path: Path) -> None:
    """`perennial admin` speaks to a running server with a token file."""
    import json
    import subprocess
    from conftest import server_binary
    (tmp_path / "token").write_text("client-secret-1\n")
    (tmp_path / "admin").write_text("admin-secret-22")
    srv = start_server('[auth]\ntoken_file = "%s"\nadmin_token_file = "%s"\n'
                       % (tmp_path / "token", tmp_path / "admin"))

    def admin(*args: str, token: str = "") -> "subprocess.CompletedProcess[str]":
        cmd = [str(server_binary()), "admin", *args, "--port", str(srv.port)]
        if token:
            cmd += ["--token-file", str(tmp_path / token)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    refused = admin("stats")
    assert refused.returncode != 0 and "UNAUTHORIZED" in refused.stderr, refused.stderr
    assert "answered in" in admin("ping", token="token").stdout
    with perennial.Client("127.0.0.1", srv.port, token="client-secret-1") as c:
        c.feedback([perennial.Event(1, 2), perennial.Event(1, 3)])
    shown = admin("stats", "events_", "users", token="token")
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split() for line in shown.stdout.splitlines())
    assert lines["events_accepted"] == "2" and lines["users"] == "1"
    assert all(k.startswith(("events_", "users")) for k in lines)
    everything = json.loads(admin("stats", "--json", token="token").stdout)
    assert everything["events_accepted"] == 2
    assert everything["scorer_loaded_cf"] == 2 and everything["scorer_loaded_popularity"] == 1  # 2: the default
    # Admin requests need the admin token.
    no = admin("snapshot", token="token")
    assert no.returncode != 0 and "UNAUTHORIZED" in no.stderr
    snap = admin("snapshot", token="admin")
    assert snap.returncode == 0 and "at sequence 2" in snap.stdout, snap.stdout + snap.stderr
    assert admin("reload", token="admin").returncode == 0
    bad = admin("frob", token="admin")
    assert bad.returncode != 0 and "unknown action 'frob'" in bad.stderr
    assert admin("shutdown", token="admin").returncode == 0
    assert srv.proc.wait(timeout=30) == 0
