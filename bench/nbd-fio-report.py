#!/usr/bin/env python3
"""Turn the fio JSON written by nbd-fio.sh into a Markdown section.

usage: nbd-fio-report.py OUTDIR   (OUTDIR holds meta and json/JOB.TARGET.REP.json)
"""
import json
import os
import statistics
import sys

TARGETS = ("urldisk", "nbdkit")


def lat_p99(d):
    return d["lat_ns"]["percentile"]["99.000000"] / 1e3


# (job, metric, value(job json), higher is better?)
METRICS = [
    ("randread-qd1", "IOPS", lambda j: j["read"]["iops"], True),
    ("randread-qd1", "mean latency (µs)", lambda j: j["read"]["lat_ns"]["mean"] / 1e3, False),
    ("randread-qd1", "p99 latency (µs)", lambda j: lat_p99(j["read"]), False),
    ("randread-qd32", "IOPS", lambda j: j["read"]["iops"], True),
    ("randread-qd32", "p99 latency (µs)", lambda j: lat_p99(j["read"]), False),
    ("seqread-cold", "MB/s", lambda j: j["read"]["bw_bytes"] / 1e6, True),
    ("seqread-warm", "MB/s", lambda j: j["read"]["bw_bytes"] / 1e6, True),
    ("seqwrite", "MB/s incl. final flush", lambda j: j["write"]["bw_bytes"] / 1e6, True),
    ("randwrite-fsync", "write IOPS", lambda j: j["write"]["iops"], True),
    ("randwrite-fsync", "mean write+flush latency (µs)",
     lambda j: (j["write"]["lat_ns"]["mean"] + j["sync"]["lat_ns"]["mean"]) / 1e3, False),
    ("randwrite-fsync", "mean flush latency (µs)", lambda j: j["sync"]["lat_ns"]["mean"] / 1e3, False),
]

DESCR = {
    "randread-qd1": "4k randread QD1, warm",
    "randread-qd32": "4k randread QD32, warm",
    "seqread-cold": "1M seqread QD8, cold (urldisk cache deleted, serve restarted)",
    "seqread-warm": "1M seqread QD8, warm",
    "seqwrite": "1M seqwrite QD8 + one flush (`--end_fsync=1`)",
    "randwrite-fsync": "4k randwrite QD1, flush after every write (`--fsync=1`)",
}


def load(outdir):
    meta = {}
    with open(os.path.join(outdir, "meta")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    runs = {}  # (job, target) -> [(fio job json, server cpu seconds)]
    d = os.path.join(outdir, "json")
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        job, target, rep = name[: -len(".json")].rsplit(".", 2)
        with open(os.path.join(d, name)) as f:
            j = json.load(f)["jobs"][0]
        if j.get("error"):
            sys.exit(f"{name}: fio error {j['error']}")
        with open(os.path.join(d, name[: -len(".json")] + ".cpu")) as f:
            cpu = int(f.read()) / int(meta["clk_tck"])
        runs.setdefault((job, target), []).append((int(rep), j, cpu))
    for v in runs.values():
        v.sort(key=lambda r: r[0])
    return meta, runs


def fmt(x):
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def main():
    outdir = sys.argv[1]
    meta, runs = load(outdir)
    med = {}
    allruns = {}
    for job, metric, fn, _ in METRICS:
        for t in TARGETS:
            vals = [fn(j) for rep, j, _ in runs[(job, t)] if rep > 0]
            med[(job, metric, t)] = statistics.median(vals)
            allruns[(job, metric, t)] = vals

    p = print
    p("## NBD: urldisk serve vs nbdkit file (fio)")
    p()
    p(f"Produced by `{meta['cmd']}` on {meta['date']} (took {meta['elapsed']} s).")
    p()
    p(f"- **Machine:** {meta['nproc']} CPUs, {meta['cpu']}, {meta['mem']} RAM, Linux {meta['kernel']}; "
      f"load average at the end {meta['load']}")
    p(f"- **Versions:** {meta['fio']}, {meta['nbdkit']}, libnbd {meta['libnbd']}, "
      f"urldisk {meta['urldisk']}, {meta['go']}")
    p(f"- **Servers:** `{meta['urldisk_serve']}` (file:// pool on the same disk) and "
      f"`{meta['nbdkit_serve']}`, both running for the whole run "
      f"(urldisk's first start adds `--create --size {meta['bytes']}`)")
    p(f"- **Client:** `{meta['fio_common']} --name=JOB ARGS`, one NBD connection per run; "
      f"working set {meta['size']} ({meta['bytes']} bytes) = whole export, first written with random "
      f"data through each server (`nbdcopy --flush`) and read once")
    p(f"- **Method:** every job {meta['reps']}× per server, runs interleaved urldisk/nbdkit, "
      f"**median** shown; time-based jobs run {meta['runtime']} s. MB = 10^6 bytes. "
      "The OS page cache is not dropped (pool objects and the raw file stay in RAM), so "
      "\"cold\" means urldisk's own cache is empty; nbdkit has no cache, so it is just restarted.")
    p()
    p("| job | metric | urldisk | nbdkit | urldisk/nbdkit | better |")
    p("|---|---|---:|---:|---:|---|")
    for job, metric, _, higher in METRICS:
        u, n = med[(job, metric, "urldisk")], med[(job, metric, "nbdkit")]
        ratio = f"{u / n:.2f}×" if n else "n/a"
        p(f"| {DESCR[job]} | {metric} | {fmt(u)} | {fmt(n)} | {ratio} | {'higher' if higher else 'lower'} |")
    p()

    # Targets (reported, not asserted).
    r32 = med[("randread-qd32", "IOPS", "urldisk")] / med[("randread-qd32", "IOPS", "nbdkit")]
    r1 = (med[("randread-qd1", "mean latency (µs)", "urldisk")]
          / med[("randread-qd1", "mean latency (µs)", "nbdkit")])
    r1p = (med[("randread-qd1", "p99 latency (µs)", "urldisk")]
           / med[("randread-qd1", "p99 latency (µs)", "nbdkit")])
    ok = lambda b: "**met**" if b else "**missed**"
    p("Targets (reported, not asserted):")
    p(f"- warm 4k randread QD32 IOPS ≥ 0.8× nbdkit: {r32:.2f}× — {ok(r32 >= 0.8)}")
    p(f"- warm 4k randread QD1 latency ≤ 1.5× nbdkit: mean {r1:.2f}× — {ok(r1 <= 1.5)} "
      f"(p99 {r1p:.2f}×)")
    p()

    # Server CPU: where the cycles go, per I/O, from /proc/PID/stat.
    p("Server process CPU time during the measured runs (utime+stime from `/proc/PID/stat`, median), "
      "per I/O and as busy cores over the run:")
    p()
    p("| job | urldisk CPU µs/op | nbdkit CPU µs/op | urldisk cores | nbdkit cores |")
    p("|---|---:|---:|---:|---:|")
    for job in DESCR:
        per_op, cores = {}, {}
        for t in TARGETS:
            a, b = [], []
            for rep, j, cpu in runs[(job, t)]:
                if rep == 0:
                    continue
                ops = sum(j[d]["total_ios"] for d in ("read", "write", "sync") if d in j)
                secs = j["job_runtime"] / 1e3
                a.append(cpu / ops * 1e6 if ops else 0.0)
                b.append(cpu / secs if secs else 0.0)
            per_op[t], cores[t] = statistics.median(a), statistics.median(b)
        cells = [fmt(per_op["urldisk"]), fmt(per_op["nbdkit"]), f"{cores['urldisk']:.2f}", f"{cores['nbdkit']:.2f}"]
        p(f"| {DESCR[job]} | " + " | ".join(cells) + " |")
    p()

    p("All runs (in order):")
    p()
    p("| job | metric | urldisk runs | nbdkit runs |")
    p("|---|---|---|---|")
    for job, metric, _, _ in METRICS:
        u = " / ".join(fmt(x) for x in allruns[(job, metric, "urldisk")])
        n = " / ".join(fmt(x) for x in allruns[(job, metric, "nbdkit")])
        p(f"| {job} | {metric} | {u} | {n} |")
    p()
    pre = []
    for t in TARGETS:
        try:
            with open(os.path.join(outdir, "json", f"prefill.{t}.time")) as f:
                s, e = map(float, f.read().split())
            pre.append(f"{t} {int(meta['bytes']) / (e - s) / 1e6:,.0f} MB/s")
        except OSError:
            pass
    if pre:
        p(f"Prefill with `nbdcopy --flush` (one run each): {', '.join(pre)}.")
        p()
    p("fio arguments per job:")
    p()
    for job in DESCR:
        p(f"- `{job}`: `{meta['args.' + job]}`")
    p()
    p("Other work was running on this machine at the same time, so absolute numbers are noisy; "
      "the urldisk/nbdkit ratio from the same run is what to compare.")


if __name__ == "__main__":
    main()
