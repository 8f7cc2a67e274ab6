"""The version commands as an operator runs them, against a real server's
data directory: a restart whose config no longer loads a learned scorer is
refused (exit 1, naming the scorer and the flag), `--drop-scorer` drops it
and writes a version without it; `perennial versions --evaluate` keeps each
scorer's figure."""

from __future__ import annotations

import json
import random
import subprocess
from typing import List

import pytest

import perennial
from conftest import server_binary

BOTH = '[scorers]\nload = ["cf", "popularity"]\ndefault = "cf"\n'
CF_ONLY = '[scorers]\nload = ["cf"]\ndefault = "cf"\n'


def _events(n: int, seed: int = 3) -> List[perennial.Event]:
    rng = random.Random(seed)
    return [perennial.Event(rng.randint(1, 60), rng.randint(1, 200), "rating", float(rng.randint(1, 5)),
                            timestamp=1_000_000 + k) for k in range(n)]


def _perennial(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([str(server_binary()), *args], capture_output=True, text=True, timeout=120)


def test_dropping_a_learned_scorer_needs_the_flag_and_leaves_a_version(start_server) -> None:
    srv = start_server(BOTH)
    events = _events(3000)
    with srv.client() as c:
        c.feedback(events[:2000])
        first = c.snapshot()
        c.feedback(events[2000:])
        before = c.score(17, list(range(1, 201)))
    assert srv.stop() == 0, srv.log()
    data = srv.data_dir

    # The wrong config: refused, with the reason and the way out.
    cfg = data + "/../cf-only.toml"
    with open(cfg, "w") as f:
        f.write(CF_ONLY)
    port = str(srv.port)
    refused = _perennial("serve", "--config", cfg, "--data-dir", data, "--port", port)
    assert refused.returncode == 1
    assert "popularity" in refused.stderr and "--drop-scorer popularity" in refused.stderr, refused.stderr

    # Asked to drop it: starts, cf scores as before, and a version without
    # popularity exists at once.
    dropped = start_server(CF_ONLY, ["--data-dir", data, "--drop-scorer", "popularity"])
    with dropped.client() as c:
        assert c.score(17, list(range(1, 201))) == before
    assert dropped.stop() == 0, dropped.log()
    listing = json.loads(_perennial("versions", "--data-dir", data, "--json").stdout)
    newest = max(listing, key=lambda v: (v["seq"], v["id"]))
    assert newest["scorers"] == ["cf"] and newest["dropped_scorers"] == ["popularity"]
    assert newest["settings"]["scorers.cf.neighbours"] == "256"

    # The flag left in (a service unit): nothing is left to drop, and the
    # start says so rather than stay armed silently.
    again = start_server(CF_ONLY, ["--data-dir", data, "--drop-scorer", "popularity"])
    assert again.stop() == 0
    assert "--drop-scorer popularity: nothing to drop" in again.log(), again.log()

    # Each scorer's evaluation of a version is kept (the first version: it
    # still holds both scorers, and 1,000 events follow it in the log).
    version = "v%d" % first
    for scorer in ("cf", "popularity"):
        out = _perennial("versions", "--data-dir", data, "--config", data + "/../perennial.toml",
                         "--evaluate", version, "--scorer", scorer)
        assert out.returncode == 0, out.stderr
        assert "(%s): HR@10" % scorer in out.stdout
    listing = json.loads(_perennial("versions", "--data-dir", data, "--json").stdout)
    entry = next(v for v in listing if v["id"] == version)
    assert sorted(entry["e1_by_scorer"]) == ["cf", "popularity"]
    assert entry["e1"]["scorer"] == "popularity"
    assert all(f["count"] > 0 for f in entry["e1_by_scorer"].values())
    table = _perennial("versions", "--data-dir", data).stdout
    assert "cf); HR@10" in table, table
    # A config that leaves out a scorer the version learned (the evaluation
    # goes on learning, and the scorers share the table): refused, naming it,
    # and the figure kept stays (review finding, helper-46: it was replaced).
    out = _perennial("versions", "--data-dir", data, "--config", cfg, "--evaluate", version, "--scorer", "cf")
    assert out.returncode == 1 and "does not load popularity" in out.stderr, out.stderr
    # So is one that loads a scorer the version did not have, or changes a
    # setting it learned with (review finding, helper-47).
    extra = data + "/../with-rnn.toml"
    with open(extra, "w") as f:
        f.write('[scorers]\nload = ["cf", "popularity", "session-rnn"]\ndefault = "cf"\n')
    out = _perennial("versions", "--data-dir", data, "--config", extra, "--evaluate", version, "--scorer", "cf")
    assert out.returncode == 1 and "loads session-rnn, which version" in out.stderr, out.stderr
    faster = data + "/../faster.toml"
    with open(faster, "w") as f:
        f.write(BOTH + "[scorers.cf]\nlearning_rate = 0.5\n")
    out = _perennial("versions", "--data-dir", data, "--config", faster, "--evaluate", version, "--scorer", "cf")
    assert out.returncode == 1 and "scorers.cf.learning_rate 0.1 -> 0.5" in out.stderr, out.stderr
    assert "--allow-changed-settings" in out.stderr
    kept = next(v for v in json.loads(_perennial("versions", "--data-dir", data, "--json").stdout) if v["id"] == version)
    assert kept["e1_by_scorer"] == entry["e1_by_scorer"]
    assert kept["e1_by_scorer"]["cf"]["config"].endswith("/perennial.toml")
    assert kept["e1_by_scorer"]["cf"]["config"].startswith("/") and ".." not in kept["e1_by_scorer"]["cf"]["config"]
    # Asked for explicitly (after a RELOAD changed a blend weight, say): the
    # figure is taken, and records what differed.
    blend = data + "/../blend.toml"
    with open(blend, "w") as f:
        f.write(BOTH + "[scorers.cf]\nfactor_weight = 0.5\n")
    out = _perennial("versions", "--data-dir", data, "--config", blend, "--evaluate", version, "--scorer", "cf",
                     "--allow-changed-settings")
    assert out.returncode == 0 and "differ from the version's" in out.stdout, out.stderr
    kept = next(v for v in json.loads(_perennial("versions", "--data-dir", data, "--json").stdout) if v["id"] == version)
    assert kept["e1_by_scorer"]["cf"]["settings_differing"] == ["scorers.cf.factor_weight 0.3 -> 0.5"]


def test_item_upserts_are_saved_by_snapshots_and_kept_by_a_rollback(start_server) -> None:
    """Upserts are logged without a sequence number of their own. They now
    count as a change: a SNAPSHOT after upserts alone writes the version
    again (before, it answered with the old one, and every start replayed
    the upserts), a graceful stop takes one, STATS' recovery estimate
    counts them, and a rollback to a version from before them keeps the
    items (what was learned goes back; the catalogue does not)."""
    srv = start_server(BOTH)
    events = _events(2000)
    with srv.client() as c:
        c.feedback(events[:1000])
        first = c.snapshot()
        c.feedback(events[1000:])
        second = c.snapshot()
        snapshots = c.stats()["snapshots"]
        p = c.pipeline()
        for k in range(300, 3300):
            p.upsert_item(20_000 + k, "an article about topic %d and some more words to encode" % (k % 7))
        p.execute()
        for k in range(300):
            c.upsert_item(10_000 + k, "an article about topic %d" % (k % 7))
        # (What the upserts took to apply, which a recovery would take again.)
        assert c.stats()["recovery_estimate_ms"] > 0
        assert c.snapshot() == second
        assert c.stats()["snapshots"] == snapshots + 1    # written again, holding the upserts
        for k in range(300, 400):
            c.upsert_item(10_000 + k, "a late article %d" % k)
    srv.kill()
    srv.start_again()   # recovery replays only the 100 upserts after that snapshot
    assert "100 records (0 events) replayed" in srv.log(), srv.log()
    with srv.client() as c:
        assert all(s.known for s in c.score(1, [10_000, 10_399]))
    assert srv.stop() == 0   # a graceful stop snapshots them (the replayed ones)
    srv.start_again()
    assert srv.log().count("records (0 events) replayed") == 1, srv.log()
    assert srv.stop() == 0

    # A rollback to the first version keeps every item upserted since.
    assert first.version == "v%d" % first
    rolled = start_server(BOTH, ["--data-dir", srv.data_dir, "--from-version", first.version])
    with rolled.client() as c:
        assert c.stats()["events_applied"] == 2000
        assert all(s.known for s in c.score(1, [10_000, 10_150, 10_399]))
        # The rollback is a version at the log's end beside the model it
        # replaced, which has the plain id v2000: SNAPSHOT names the
        # rollback's own (before, a client could only guess "v%d" % seq,
        # which names the model rolled back from).
        now = c.snapshot()
        assert now == 2000 and now.version.startswith("v2000.") and now.version != "v2000", repr(now)
    assert " 3400 item upsert(s) made since are carried over" in rolled.log(), rolled.log()
    assert rolled.stop() == 0
    listed = _perennial("versions", "--data-dir", srv.data_dir, "--json")
    listing = {v["id"]: v for v in json.loads(listed.stdout or "[]")}
    assert listing.get(now.version, {}).get("rolled_back_from") == first.version, (listed.stdout, listed.stderr)


def test_versions_verify_names_a_damaged_version(start_server) -> None:
    """`perennial versions --verify` reads each version whole: a damaged
    one is marked (it used to be listed like any other)."""
    srv = start_server(BOTH)
    events = _events(2000)
    with srv.client() as c:
        c.feedback(events[:1000])
        first = c.snapshot()
        c.feedback(events[1000:])
    assert srv.stop() == 0
    damaged = "%s/snapshots/snapshot-%d.bin" % (srv.data_dir, first)
    data = bytearray(open(damaged, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(damaged, "wb").write(bytes(data))
    listed = _perennial("versions", "--data-dir", srv.data_dir, "--json", "--verify")
    listing = {v["id"]: v for v in json.loads(listed.stdout)}
    assert listing["v%d" % first]["verified"] is False and "checksum" in listing["v%d" % first]["damage"]
    assert listing["v2000"]["verified"] is True
    text = _perennial("versions", "--data-dir", srv.data_dir, "--verify")
    assert "DAMAGED" in text.stdout and "1 version(s) damaged" in text.stdout, text.stdout
    # A damaged version fails the check, as a damaged log fails `log check`
    # (review finding, helper-76: it exited 0).
    assert listed.returncode == 1 and text.returncode == 1


def test_admin_json_reports_a_failure_as_json() -> None:
    """`perennial admin ... --json` that fails prints a JSON object too
    (review finding, helper-46: stdout was empty, so a script parsing it
    got nothing), besides the message on stderr and exit code 1."""
    from conftest import free_port
    out = _perennial("admin", "ping", "--port", str(free_port()), "--json")
    assert out.returncode == 1
    reported = json.loads(out.stdout)
    assert reported["action"] == "ping" and "cannot connect" in reported["error"], out.stdout
    assert "cannot connect" in out.stderr


def test_admin_json_reports_a_refused_command_line_as_json() -> None:
    """A command line refused before `admin` runs (an unknown option, a
    value of the wrong type, an unknown action, no action) prints a JSON
    object too, besides the message and usage on stderr and exit code 64;
    without --json, stdout stays empty."""
    cases = [
        (["admin", "stats", "--prot", "1", "--json"], "stats", "Unknown option '--prot'"),
        (["admin", "--port", "x", "stats", "--json"], "stats", "'x' is invalid for '--port"),
        (["admin", "bogus", "--json"], "bogus", "unknown action 'bogus'"),
        (["admin", "--json"], None, "Missing expected argument"),
    ]
    for args, action, message in cases:
        out = _perennial(*args)
        assert out.returncode == 64, (args, out)
        reported = json.loads(out.stdout)
        assert reported["action"] == action and message in reported["error"], (args, out.stdout)
        assert message in out.stderr and "Usage:" in out.stderr, (args, out.stderr)
    plain = _perennial("admin", "stats", "--prot", "1")
    assert plain.returncode == 64 and plain.stdout == "" and "Unknown option" in plain.stderr
    # After "--", "--json" is the action, not the flag (helper-50).
    quoted = _perennial("admin", "--", "--json")
    assert quoted.returncode == 64 and quoted.stdout == "" and "unknown action '--json'" in quoted.stderr, quoted


def test_versions_verify_tells_other_settings_from_damage(start_server) -> None:
    """A version saved under other settings than the config --verify
    restores it under (here a 32-dimension table, checked under the
    bundled config's 64) is whole: it was called damaged (review finding,
    helper-54). Under the server's own config it verifies."""
    import os
    srv = start_server("[table]\ndimension = 32\n")
    with srv.client() as c:
        c.feedback(_events(500))
        c.snapshot()
    assert srv.stop() == 0
    text = _perennial("versions", "--data-dir", srv.data_dir, "--verify").stdout
    assert "DAMAGED" not in text and "NOT CHECKED (saved under other settings)" in text, text
    assert "no damage found" in text, text
    cfg = os.path.join(os.path.dirname(srv.data_dir), "perennial.toml")
    text = _perennial("versions", "--data-dir", srv.data_dir, "--verify", "--config", cfg).stdout
    assert "every version verified" in text, text


def test_a_quiet_server_takes_a_snapshot_after_every_seconds(start_server) -> None:
    """`snapshot.every_seconds`: a version once that long has passed with
    something new, even far below every_events (a quiet shop had one version
    a day, and so nothing to roll back to: helper-56); none without news."""
    import time
    srv = start_server(BOTH + '[snapshot]\nevery_seconds = 1\n')
    with srv.client() as c:
        before = c.stats()["snapshots"]
        events = _events(10)
        c.feedback(events)
        deadline = time.monotonic() + 10
        while c.stats()["snapshots"] == before and time.monotonic() < deadline:
            time.sleep(0.1)
        taken = c.stats()["snapshots"]
        assert taken == before + 1
        time.sleep(1.6)  # nothing new: no more versions
        assert c.stats()["snapshots"] == taken
        assert c.delete_users([events[0].user]) == 1  # a change without a new event counts
        deadline = time.monotonic() + 10
        while c.stats()["snapshots"] == taken and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.stats()["snapshots"] == taken + 1


def test_versions_a_reload_took_are_not_offered_as_rollback_points_then_pruned(start_server) -> None:
    """A RELOAD's own snapshot goes once a newer version exists, so (review
    finding, helper-71): removing a scorer added by an earlier RELOAD is
    refused unless a version that stays holds its state (before, the log
    named the RELOAD's version, pruned 8 ms later), and a rollback keeps
    the model it started from even when a RELOAD took that version (before,
    the rollback's own version pruned it)."""
    srv = start_server(BOTH)
    cfg = srv.data_dir + "/../perennial.toml"
    events = _events(3000)
    with srv.client() as c:
        c.feedback(events[:1000])
        first = c.snapshot()
        at_first = c.score(17, list(range(1, 201)))
        with open(cfg, "w") as f:
            f.write('[scorers]\nload = ["cf", "popularity", "session-rnn"]\ndefault = "cf"\n')
        c.reload()                                   # session-rnn added: a RELOAD's own version
        c.feedback(events[1000:2000])
        with open(cfg, "w") as f:
            f.write(BOTH)
        with pytest.raises(perennial.InvalidArgument, match="no kept version holds"):
            c.reload()                               # its state is in no version that stays
        assert c.recommend(1, k=3, scorer="session-rnn")
        held = c.snapshot()                          # now one holds it
        c.feedback(events[2000:])
        c.reload()                                   # allowed, and names that version
        at_end = c.score(17, list(range(1, 201)))
    assert "version %s still holds it" % held.version in srv.log(), srv.log()
    assert srv.stop() == 0, srv.log()
    # Nothing changed after the last RELOAD: its own version is the newest.
    newest = max(json.loads(_perennial("versions", "--data-dir", srv.data_dir, "--json").stdout),
                 key=lambda v: (v["seq"], v["id"]))
    assert newest["seq"] == 3000 and "reload" in newest, newest

    rolled = start_server(BOTH, ["--data-dir", srv.data_dir, "--from-version", first.version])
    with rolled.client() as c:
        assert c.score(17, list(range(1, 201))) == at_first
    assert rolled.stop() == 0, rolled.log()
    after = {v["id"]: v for v in json.loads(_perennial("versions", "--data-dir", srv.data_dir, "--json").stdout)}
    # The model rolled back from is still a version to go back to.
    assert newest["id"] in after and "rollback" in after[newest["id"]].get("kept", ""), sorted(after)
    back = start_server(BOTH, ["--data-dir", srv.data_dir, "--from-version", newest["id"]])
    with back.client() as c:
        assert c.score(17, list(range(1, 201))) == at_end
    assert back.stop() == 0, back.log()


def test_bench_fails_on_a_server_that_does_not_answer_and_checks_its_json_path_first(start_server, tmp_path) -> None:
    """Review findings (helper-76): `perennial bench` against a stopped
    server printed 0 requests/s, 0 errors and exited 0, and a --json path
    it could not write failed only after the whole run."""
    import signal
    srv = start_server(BOTH)
    out = _perennial("bench", "ping", "--port", str(srv.port), "--duration", "0.5", "--json", str(tmp_path / "no" / "b.json"))
    assert out.returncode != 0 and "there is no directory" in out.stderr and "requests/s" not in out.stdout, out
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        out = _perennial("bench", "ping", "--port", str(srv.port), "--duration", "1", "--connections", "1")
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    assert out.returncode != 0, out


def test_a_serve_that_cannot_listen_leaves_no_data_directory(tmp_path) -> None:
    """Review finding (helper-76): a mistyped port or address failed the
    start but left the (new) data directory behind, `./data` by default."""
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _perennial("serve", "--port", str(port), "--data-dir", str(tmp_path / "new" / "data"))
    assert out.returncode == 1 and "address already in use" in out.stderr, out
    assert not (tmp_path / "new").exists()
    out = _perennial("serve", "--host", "999.1.1.1", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 1 and "bad listen address" in out.stderr and not (tmp_path / "data").exists(), out
    # A directory that was there stays, with what it held.
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("x")
    out = _perennial("serve", "--host", "999.1.1.1", "--data-dir", str(tmp_path / "kept"))
    assert out.returncode == 1 and (tmp_path / "kept" / "mine.txt").read_text() == "x", out


@pytest.mark.parametrize("args,said", [
    (["--protocol", "e2", "--data", "x", "--variants", "online"], "--variants applies to e1 and drift"),
    (["--protocol", "drift", "--data", "x"], "--data is not read by drift"),
    (["--protocol", "e1", "--data", "x", "--variants", ","], "--variants names no variant"),
    (["--protocol", "e1", "--data", "x", "--variants", ""], "--variants names no variant"),
    (["--protocol", "e1", "--data", "x", "--user-fraction", "-0.1"], "--user-fraction must be above 0 and at most 1, not -0.1"),
    (["--protocol", "e3", "--data", "x", "--plot", "c.svg"], "--plot draws the curve of e1 or drift"),
])
def test_eval_refuses_a_flag_its_protocol_would_ignore(args, said) -> None:
    """Review findings (helper-76): these ran, ignoring the flag (or, for
    an empty --variants, running popularity alone), or took -0.1 for a flag."""
    out = _perennial("eval", *args)
    assert out.returncode != 0 and said in out.stderr, out
