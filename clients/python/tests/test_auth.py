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
    # Each refusal says what to change in the client, not only the
    # server's words about HELLO, which the client sends by itself.
    with perennial.Client(host, port, hello=False) as c:
        with pytest.raises(perennial.Unauthorized, match=r"send HELLO with it first \(use a client made "
                           r"with token= one of the tokens in the server's auth.token_file, and hello=True"):
            c.stats()
    for token in (None, "wrong-token-x"):
        with pytest.raises(perennial.Unauthorized, match=r"\(the client sends its token= argument: give it "
                           r"one of the tokens \(one a line\) in the server's auth.token_file") as e:
            perennial.Client(host, port, token=token).ping()
        assert e.value.message.startswith("wrong token (" if token else "this server needs a token (HELLO sent none) (")
    with perennial.Client(host, port, token="client-secret-1") as c:
        assert c.ping()
        c.feedback([perennial.Event(1, 2)])
        for admin_op in (c.snapshot, c.reload):
            with pytest.raises(perennial.Unauthorized, match=r"\(admin requests need a client made with token= "
                               r"one of the tokens in the server's auth.admin_token_file, and hello=True"):
                admin_op()
        with pytest.raises(perennial.Unauthorized, match=r"\(SHUTDOWN needs a client made with token= one of the "
                           r"tokens in the server's auth.admin_token_file, .* or a server with server.allow_shutdown"):
            c.shutdown()
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
    assert snap.returncode == 0 and "version v2, at log sequence 2" in snap.stdout, snap.stdout + snap.stderr
    assert json.loads(admin("snapshot", "--json", token="admin").stdout) == {"seq": 2, "version": "v2"}
    assert json.loads(admin("ping", "--json", token="token").stdout)["max_events"] == 10000
    assert admin("reload", token="admin").returncode == 0
    assert json.loads(admin("reload", "--json", token="admin").stdout) == {"reloaded": True}
    bad = admin("frob", token="admin")
    assert bad.returncode != 0 and "unknown action 'frob'" in bad.stderr
    down = admin("shutdown", "--json", token="admin")
    assert down.returncode == 0 and json.loads(down.stdout) == {"stopping": True}
    assert srv.proc.wait(timeout=30) == 0


def test_admin_names_a_peer_that_is_not_perennial() -> None:
    """`perennial admin ping` against a web server says what it heard,
    and against a silent peer gives up after --timeout, saying so."""
    import socket
    import subprocess
    import threading
    from conftest import server_binary

    def listen(reply: bytes) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()

        def serve() -> None:
            conn, _ = sock.accept()
            conn.recv(1024)
            if reply:
                conn.sendall(reply)
                conn.close()
            else:
                conn.recv(1024)  # silent until the client gives up
            sock.close()
        threading.Thread(target=serve, daemon=True).start()
        return int(sock.getsockname()[1])

    for reply, words in [(b"HTTP/1.1 400 Bad Request\r\n\r\n", '"HTTP/1.1 400 Bad Request"'),
                         (b"", "no reply from 127.0.0.1:%d within 0.5 s")]:
        port = listen(reply)
        done = subprocess.run([str(server_binary()), "admin", "ping", "--port", str(port), "--timeout", "0.5"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0
        assert "did not answer HELLO like a Perennial server" in done.stderr, done.stderr
        assert (words % port if "%d" in words else words) in done.stderr, done.stderr


def test_a_reload_that_rotates_the_admin_token_still_returns(start_server, tmp_path: Path) -> None:
    """reload() refreshes server_info with a new HELLO; when the reloaded
    config no longer accepts this client's token, the reload (applied) is
    not reported as a failure, and server_info keeps what it had."""
    (tmp_path / "admin").write_text("admin-old-1")
    srv = start_server('[auth]\nadmin_token_file = "%s"\n' % (tmp_path / "admin"))
    with perennial.Client(*srv.address, token="admin-old-1") as c:
        assert c.ping()
        before = c.server_info
        assert before is not None
        (tmp_path / "admin").write_text("admin-new-2")
        c.reload()
        assert c.server_info == before
        assert c.stats()["reloads"] == 1
    with perennial.Client(*srv.address, token="admin-new-2") as c:
        assert c.snapshot() == 0


def test_a_client_token_is_rotated_without_refusing_anyone(start_server, tmp_path: Path) -> None:
    """A token file may list several tokens, one per line: a token is
    rotated by adding the new one, moving clients to it, then removing the
    old, with a RELOAD after each edit. A feedback streamer goes on
    throughout, its client moved to the new token by a HELLO on the same
    connection; a connection left on the old token loses its access when
    the token is removed (how a leaked token is revoked), and a new
    connection with it is refused."""
    (tmp_path / "token").write_text("old-secret-1\n")
    (tmp_path / "admin").write_text("admin-secret-22\n")
    srv = start_server('[auth]\ntoken_file = "%s"\nadmin_token_file = "%s"\n'
                       % (tmp_path / "token", tmp_path / "admin"))
    admin = perennial.Client(*srv.address, token="admin-secret-22")
    left = perennial.Client(*srv.address, token="old-secret-1")
    assert left.ping()
    with perennial.Client(*srv.address, token="old-secret-1") as moved:
        with moved.streamer(batch_size=10) as stream:
            stream.send_many(perennial.Event(1, i) for i in range(1, 51))
            # Both tokens, the new one on the second line among blank ones.
            (tmp_path / "token").write_text("old-secret-1\n\n  new-secret-2  \n")
            admin.reload()
            for token in ("old-secret-1", "new-secret-2"):
                with perennial.Client(*srv.address, token=token) as c:
                    ack = c.feedback([perennial.Event(2, 7)])
                    assert ack.last_seq == ack.first_seq
            stream.send_many(perennial.Event(1, i) for i in range(51, 101))
            stream.flush()
            moved.token = "new-secret-2"
            moved.hello()
            assert left.ping()
            # The old token removed: the moved streamer goes on, the
            # connection left on it is refused, saying why.
            (tmp_path / "token").write_text("new-secret-2\n")
            admin.reload()
            stream.send_many(perennial.Event(1, i) for i in range(101, 151))
        assert moved.stats()["events_accepted"] == 152
    with pytest.raises(perennial.Unauthorized, match="the token this connection's HELLO sent was removed from the "
                       "server's token files: send HELLO with one they list"):
        left.stats()
    left.close()
    with pytest.raises(perennial.Unauthorized, match="wrong token"):
        perennial.Client(*srv.address, token="old-secret-1").ping()
    with perennial.Client(*srv.address, token="new-secret-2") as c:
        assert c.ping()
    # perennial's tools given a file of two tokens send the first, the one
    # the server knows at every step of a rotation: here the next rotation's
    # file, edited but not yet reloaded.
    import subprocess
    from conftest import server_binary
    (tmp_path / "both").write_text("new-secret-2\nnewer-secret-3\n")
    shown = subprocess.run([str(server_binary()), "admin", "ping", "--port", str(srv.port),
                            "--token-file", str(tmp_path / "both")], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "answered in" in shown.stdout, shown.stderr
    # A short token on a later line is named with its line (CRLF line ends
    # too); the reload is refused and the tokens stay.
    (tmp_path / "token").write_text("new-secret-2\nshort\n")
    with pytest.raises(perennial.InvalidArgument, match=r"the token on line 2 of .*token is shorter than 8"):
        admin.reload()
    (tmp_path / "token").write_bytes(b"\r\n\r\nshort\r\n")
    with pytest.raises(perennial.InvalidArgument, match=r"the token on line 3 of .*token is shorter than 8"):
        admin.reload()
    # CRLF line ends split tokens as LF ones do.
    (tmp_path / "token").write_bytes(b"new-secret-2\r\ncrlf-secret-4\r\n")
    admin.reload()
    for token in ("new-secret-2", "crlf-secret-4"):
        with perennial.Client(*srv.address, token=token) as c:
            assert c.ping()
    # Only the whole token: a prefix of one, or one with more after it, is wrong.
    for token in ("new-secret-", "new-secret-22", "crlf-secret-4" + "x" * 60000):
        with pytest.raises(perennial.Unauthorized, match="wrong token"):
            perennial.Client(*srv.address, token=token).ping()
    with perennial.Client(*srv.address, token="new-secret-2") as c:
        assert c.ping()
    admin.close()


def test_an_interrupted_hello_does_not_leave_the_connection_open(start_server, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding (helper-42): a KeyboardInterrupt while the automatic
    HELLO of a new connection was being prepared left that connection open
    without it, and on a server with a token every later call was refused
    until the idle timeout. Now the connection is closed and the next call
    greets a new one."""
    from perennial import _commands
    (tmp_path / "token").write_text("tok-AAAAAAAA\n")
    srv = start_server('[auth]\ntoken_file = "%s"\n' % (tmp_path / "token"))
    c = srv.client(token="tok-AAAAAAAA")
    assert c.ping() is True
    c.close()
    real = _commands.check_frame_size

    def interrupted(cmd: object, limit: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_commands, "check_frame_size", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.ping()
    monkeypatch.setattr(_commands, "check_frame_size", real)
    assert not c.connected
    assert c.ping() is True


def test_a_pipelines_hello_carries_the_clients_token(start_server, tmp_path: Path) -> None:
    """A pipeline's HELLO went without the client's token and name, so a
    server with a token refused it (review finding, helper-52)."""
    (tmp_path / "token").write_text("client-secret-1\n")
    srv = start_server('[auth]\ntoken_file = "%s"\n' % (tmp_path / "token"))
    with perennial.Client(srv.host, srv.port, token="client-secret-1", client_name="shop-7") as c:
        info, snapshot_refused = c.pipeline().hello().ping().execute()
        assert isinstance(info, perennial.ServerInfo), info
        assert c.server_info == info
        assert snapshot_refused is True
