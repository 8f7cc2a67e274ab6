"""Peers for bench/run.sh, and the report it writes.

  peers.py matvec --items N --dim D   numpy's single-core matrix-vector bound (items scored per second)
  peers.py river --data DIR           River BiasedMF predict_one + learn_one over the E1 stream (events/s)
  peers.py stalls --seconds S         how often this core was taken away (gaps in a busy loop)
  peers.py report --dir D --runs R    bench/RESULTS.md from the runs' JSON
"""

import argparse
import csv
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time


def matvec(items: int, dim: int) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    table = rng.standard_normal((items, dim), dtype=np.float32)
    q = rng.standard_normal(dim, dtype=np.float32)
    out = np.empty(items, dtype=np.float32)
    for _ in range(200):
        np.dot(table, q, out=out)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2:
        np.dot(table, q, out=out)
        reps += 1
    secs = time.perf_counter() - t0
    print(json.dumps({"items_per_second": items * reps / secs, "matvec_us": secs / reps * 1e6}))


def river(data: str) -> None:
    from river import optim, reco
    rows = []
    with open(os.path.join(data, "ratings.csv")) as f:
        r = csv.reader(f)
        next(r)
        for u, i, rating, ts in r:
            rows.append((int(ts), int(u), int(i), float(rating)))
    rows.sort()
    model = reco.BiasedMF(n_factors=10, bias_optimizer=optim.SGD(0.025), latent_optimizer=optim.SGD(0.05),
                          weight_initializer=optim.initializers.Zeros(),
                          latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=71))
    t0 = time.perf_counter()
    for _, u, i, rating in rows:
        model.predict_one(str(u), str(i))
        model.learn_one(str(u), str(i), rating)
    secs = time.perf_counter() - t0
    print(json.dumps({"events_per_second": len(rows) / secs, "events": len(rows)}))


def stalls(seconds: float) -> None:
    # A busy loop reading the clock: a gap between two readings far longer
    # than one turn of the loop (well under 1 µs) is time the core was taken
    # from us: the hypervisor or the kernel ran something else. On a quiet
    # machine gaps over 1 ms are rare; where they are frequent they, not the
    # server, set a latency tail.
    clock = time.perf_counter_ns
    start = last = clock()
    end = start + int(seconds * 1e9)
    over_100us = over_1ms = 0
    lost = longest = past_1ms = 0
    while last < end:
        now = clock()
        gap = now - last
        last = now
        if gap > 100_000:
            over_100us += 1
            lost += gap
            longest = max(longest, gap)
            if gap > 1_000_000:
                over_1ms += 1
                past_1ms += gap - 1_000_000
    secs = (last - start) / 1e9
    print(json.dumps({"seconds": secs, "over_100us_per_s": over_100us / secs, "over_1ms_per_s": over_1ms / secs,
                      "longest_us": longest / 1e3, "lost_share": lost / (last - start),
                      "past_1ms_share": past_1ms / (last - start)}))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(d: str, runs: int) -> None:
    def series(pattern, key):
        return [load(p).get(key) for p in sorted(glob.glob(os.path.join(d, pattern)))]

    def fmt(x, digits=0):
        return "n/a" if x is None else f"{x:,.{digits}f}"

    def ratio(a, b):
        return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f} x"

    cpu = "unknown"
    try:
        flags = set()
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
        # Which of the kernels' paths the server takes (they dispatch at run time).
        simd = ("AVX-512 with VNNI" if "avx512_vnni" in flags else "AVX2 with FMA" if {"avx2", "fma"} <= flags
                else "no AVX2 (plain loops)")
        cpu += f" ({simd})"
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
        mem = f"{kb / 1048576:.0f} GiB"
    except (OSError, AttributeError):
        pass
    lines = ["# Benchmark results", "",
             f"Written by `bench/run.sh` ({runs} runs; every figure is the median over runs, and every ratio is taken "
             "between figures measured in the same runs). Release build, loopback; servers pinned to core 0, "
             "load clients to core 1.", "",
             f"Machine: {cpu}; {os.cpu_count()} cores; {mem}; {platform.system()} {platform.release()}; "
             f"Python {platform.python_version()}.", "",
             "## Protocol floor: PING, 50 connections", "",
             "| pipeline | Perennial (req/s) | redis-server, same client (req/s) | ratio | each run's ratio (median) | redis-benchmark's own client (req/s) | client core busy (Perennial / redis) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def paired(p):
        """Each run's Perennial ÷ redis, the two measured back to back, and
        their median: the host's speed drifts between runs (by a quarter on
        this VM), which a ratio of medians taken over different runs mixes in."""
        out = []
        for r in range(1, runs + 1):
            a = load(os.path.join(d, f"ping-p{p}-{r}.json")).get("throughput")
            b = load(os.path.join(d, f"redis-p{p}-{r}.json")).get("throughput")
            if a and b:
                out.append(a / b)
        return out, med(out)
    for p in (1, 16):
        ours = med(series(f"ping-p{p}-*.json", "throughput"))
        red = med(series(f"redis-p{p}-*.json", "throughput"))
        rb = []
        for path in glob.glob(os.path.join(d, f"rb-p{p}-*.csv")):
            for row in csv.reader(open(path)):
                if row and row[0].startswith("PING") and len(row) > 1:
                    try:
                        rb.append(float(row[1]))
                    except ValueError:
                        pass
        busy = [med(series(f"{w}-p{p}-*.json", "client_cpu_share")) for w in ("ping", "redis")]
        busy_text = " / ".join("n/a" if b is None else f"{b:.0%}" for b in busy)
        each, mid = paired(p)
        each_text = ", ".join(f"{x:.2f}" for x in each) + (f" ({mid:.3f} x)" if mid else "")
        lines.append(f"| {p} | {fmt(ours)} | {fmt(red)} | {ratio(ours, red)} | {each_text} | {fmt(med(rb))} | {busy_text} |")
    lines += ["", "Client core busy: the load client's CPU time over the run's wall time. Near 100% the client, "
              "which does as much kernel work per request as the server, sets the pace, and the ratio says less "
              "about the servers. So the servers' own CPU time per request (user + system, from /proc, over the "
              "whole run including its 0.5 s warm-up) is compared too:", "",
              "| pipeline | Perennial µs CPU / request | redis-server µs CPU / request | redis ÷ Perennial |",
              "| --- | --- | --- | --- |"]
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")

    def cpu_per_request(name, p):
        out = []
        for path in sorted(glob.glob(os.path.join(d, f"{name}-p{p}-*.ticks"))):
            r = load(path.replace(".ticks", ".json"))
            try:
                ticks = float(open(path).read())
            except (OSError, ValueError):
                continue
            total = r.get("requests_per_second", 0) * (r.get("seconds", 0) + 0.5)
            if total > 0:
                out.append(ticks * tick_us / total)
        return med(out)

    cpu_ratios = {}
    for p in (1, 16):
        ours, red = cpu_per_request("ping", p), cpu_per_request("redis", p)
        cpu_ratios[p] = ratio_value(red, ours)
        lines.append(f"| {p} | {fmt(ours, 2)} | {fmt(red, 2)} | {ratio(red, ours)} |")
    mv = med(series("matvec-*.json", "items_per_second"))
    lines += ["", "## RECOMMEND top-10 over ml-latest-small (9,742 items, dimension 64), scorer cf", "",
              "| connections | req/s | p50 µs | p99 µs | p99.9 µs | items scored/s | vs numpy single-core matvec |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in (1, 16, 64):
        rps = med(series(f"rec-c{c}-*.json", "throughput"))
        scored = None if rps is None else rps * 9742
        lines.append(f"| {c} | {fmt(rps)} | {fmt(med(series(f'rec-c{c}-*.json', 'p50_us')))} | "
                     f"{fmt(med(series(f'rec-c{c}-*.json', 'p99_us')))} | {fmt(med(series(f'rec-c{c}-*.json', 'p999_us')))} | "
                     f"{fmt(scored)} | {ratio(scored, mv)} |")
    open_rate = med([float(open(p).read()) for p in glob.glob(os.path.join(d, "rec-open-rate-*.txt"))])
    if open_rate is not None:
        lines.append(f"| 16, open loop at {fmt(open_rate)} req/s (half the closed-loop figure) | "
                     f"{fmt(med(series('rec-open-*.json', 'throughput')))} | {fmt(med(series('rec-open-*.json', 'p50_us')))} | "
                     f"{fmt(med(series('rec-open-*.json', 'p99_us')))} | {fmt(med(series('rec-open-*.json', 'p999_us')))} | | |")
    lines += ["", "Closed loop: each connection sends its next request when the last reply arrives, so the rows measure "
              "capacity, and their latency at 16 or 64 connections is mostly waiting in line behind the other "
              "connections' requests. The open-loop row sends on a fixed schedule (latency from the intended send time) "
              "at half the 16-connection capacity."]
    def stall_text(core):
        per_s = med(series(f"stalls-{core}-*.json", "over_1ms_per_s"))
        longest = med(series(f"stalls-{core}-*.json", "longest_us"))
        past = med(series(f"stalls-{core}-*.json", "past_1ms_share"))
        if per_s is None or past is None:
            return "n/a", 0
        return f"{per_s:.1f} per second over 1 ms, the longest {longest / 1000:.1f} ms", past
    server_text, server_past = stall_text("server")
    client_text, client_past = stall_text("client")
    lines += ["", "Host stalls, measured on each idle core after the server stopped (a busy loop reading the clock, "
              f"3 s per run): the server's core {server_text}; the client's core {client_text}. An open-loop request "
              "that arrives in a stall's first (length − 1 ms) is more than 1 ms late whatever the server does, "
              "and a stall on either core counts (the client measures from the intended send time); so stalls "
              f"alone make at least {server_past + client_past:.2%} of the open-loop requests miss 1 ms "
              "(more with the backlog they leave), against the 1% the p99 allows."]
    lines += ["", f"numpy (OPENBLAS_NUM_THREADS=1) scores {fmt(mv)} items/s in one matrix-vector product "
              f"({fmt(med(series('matvec-*.json', 'matvec_us')), 1)} µs per 9,742 × 64 product)."]
    applied = []
    for path in glob.glob(os.path.join(d, "replay-*.txt")):
        m = re.search(r"applied in ([\d.]+) s \((\d+) events/s\)", open(path).read())
        if m:
            applied.append((float(m.group(1)), float(m.group(2))))
    secs = med([a for a, _ in applied])
    rate = med([b for _, b in applied])
    rv = med(series("river-*.json", "events_per_second"))
    lines += ["", "## Feedback ingest (fsync everysec, CF learning on)", "",
              "| | events/s | seconds for ml-latest-small |", "| --- | --- | --- |",
              f"| Perennial: `perennial replay`, one connection, until every event is applied | {fmt(rate)} | {fmt(secs, 2)} |",
              f"| River BiasedMF predict_one + learn_one, in process | {fmt(rv)} | |",
              f"| ratio | {ratio(rate, rv)} | |"]
    lines += ["", "## Freshness: FEEDBACK acknowledged → first RECOMMEND that reflects it", "",
              f"p50 {fmt(med(series('fresh-*.json', 'p50_us')))} µs, p99 {fmt(med(series('fresh-*.json', 'p99_us')))} µs, "
              f"max {fmt(med(series('fresh-*.json', 'max_us')))} µs (2,000 samples per run, idle server)."]
    # The goals of issue 8, against this run's figures.
    p1 = ratio_value(med(series("ping-p1-*.json", "throughput")), med(series("redis-p1-*.json", "throughput")))
    p16 = ratio_value(med(series("ping-p16-*.json", "throughput")), med(series("redis-p16-*.json", "throughput")))
    r16 = med(series("rec-c16-*.json", "throughput"))
    bound = ratio_value(None if r16 is None else r16 * 9742, mv)
    p99 = med(series("rec-c16-*.json", "p99_us"))
    open_p99 = med(series("rec-open-*.json", "p99_us"))
    ingest = ratio_value(rate, rv)
    fresh = med(series("fresh-*.json", "p99_us"))

    def row(goal, value, ok):
        return f"| {goal} | {value} | {'met' if ok else 'not met'} |"

    # (Three decimals against a goal: 1.297 x must not read as 1.30 x.)
    lines += ["", "## Against the goals", "", "| goal | measured | |", "| --- | --- | --- |",
              row("PING pipeline 1 >= 1.0 x redis (same client)", f"{p1:.3f} x" if p1 else "n/a", p1 is not None and p1 >= 1.0),
              row("PING pipeline 16 >= 1.3 x redis (same client)", f"{p16:.3f} x" if p16 else "n/a", p16 is not None and p16 >= 1.3),
              row("(PING pipeline 1, median of each run's ratio)", f"{paired(1)[1]:.3f} x" if paired(1)[1] else "n/a",
                  paired(1)[1] is not None and paired(1)[1] >= 1.0),
              row("(PING pipeline 16, median of each run's ratio)", f"{paired(16)[1]:.3f} x" if paired(16)[1] else "n/a",
                  paired(16)[1] is not None and paired(16)[1] >= 1.3),
              row("(PING pipeline 1, CPU per request: redis ÷ Perennial)", f"{cpu_ratios[1]:.3f} x" if cpu_ratios.get(1) else "n/a",
                  cpu_ratios.get(1) is not None and cpu_ratios[1] >= 1.0),
              row("(PING pipeline 16, CPU per request: redis ÷ Perennial)", f"{cpu_ratios[16]:.3f} x" if cpu_ratios.get(16) else "n/a",
                  cpu_ratios.get(16) is not None and cpu_ratios[16] >= 1.3),
              row("RECOMMEND p99 <= 1 ms at 16 connections (closed loop)", f"{fmt(p99)} µs", p99 is not None and p99 <= 1000),
              row(f"RECOMMEND p99 <= 1 ms at 16 connections (open loop, {fmt(open_rate)} req/s)", f"{fmt(open_p99)} µs",
                  open_p99 is not None and open_p99 <= 1000),
              row("RECOMMEND scoring >= 70% of the numpy matvec bound", f"{bound:.3f} x" if bound else "n/a", bound is not None and bound >= 0.7),
              row("ingest >= 10 x River BiasedMF", f"{ingest:.3f} x" if ingest else "n/a", ingest is not None and ingest >= 10),
              row("ml-latest-small replay < 1 s", f"{fmt(secs, 2)} s", secs is not None and secs < 1),
              row("freshness p99 <= 5 ms", f"{fmt(fresh)} µs", fresh is not None and fresh <= 5000)]
    print("\n".join(lines))


def ratio_value(a, b):
    return None if a is None or b in (None, 0) else a / b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["matvec", "river", "stalls", "report"])
    ap.add_argument("--items", type=int, default=9742)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--data")
    ap.add_argument("--dir")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3)
    a = ap.parse_args()
    if a.what == "matvec":
        matvec(a.items, a.dim)
    elif a.what == "river":
        river(a.data)
    elif a.what == "stalls":
        stalls(a.seconds)
    else:
        report(a.dir, a.runs)


if __name__ == "__main__":
    main()
