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
