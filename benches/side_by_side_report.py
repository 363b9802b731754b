#!/usr/bin/env python3
"""Helper for benches/side_by_side.sh (not meant to be run by hand).

  side_by_side_report.py parse OUTPUT
      Print one tab-separated line "rps bps p99_us p50_us requests bytes sock_errors
      status_errors source duration_s" for one run. Prefers the BENCH_RESULT line written by
      benches/wrk/summary.lua (exact numbers from wrk's summary) or by side_by_side_load.py
      cold; falls back to parsing wrk's text output (Requests/sec, Transfer/sec, Latency
      Distribution 99%).

  side_by_side_report.py report RESULTS RSS IDLE MIRROR_GETS LOGS CLK_TCK
      Print the per-round raw numbers and the markdown tables of medians.
      RESULTS columns: scenario round server, the 10 columns of `parse`, then user_ticks
        sys_ticks (CPU time of the server's processes during the run) and log_bytes (growth of
        the server's log during the run)
      RSS columns: server total_kib max_single_kib nprocs
      IDLE columns: server connections nprocs before_kib with_kib closed_kib
      MIRROR_GETS columns: round server origin_gets
      LOGS columns: instance file bytes lines
"""

import re
import statistics
import sys

MIB = 1024.0 * 1024.0

BIN_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}
TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

# The main table's scenarios, in order: (scenario, label, throughput in MiB/s rather than req/s)
MAIN = [
    ("hit4k", "4 KiB hit, one object", False),
    ("hit4k_many", "4 KiB hit, many objects, random keys", False),
    ("hit4k_disk", "4 KiB disk hit (memory tier off), random keys", False),
    ("hit1m", "1 MiB hit", True),
    ("hitjs_gzip", "100 KB JS hit, gzip", False),
    ("hitjs_br", "100 KB JS hit, gzip, br", False),
    ("redirect", "302, the same missing key", False),
    ("redirect_distinct", "302, a distinct missing key each", False),
]


def parse_binary(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGTP]?B?)\s*", text)
    if not m:
        raise ValueError(f"cannot parse size {text!r}")
    unit = m.group(2)
    if unit and not unit.endswith("B"):
        unit += "B"
    return float(m.group(1)) * BIN_UNITS[unit]


def parse_time_us(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"cannot parse time {text!r}")
    return float(m.group(1)) * TIME_UNITS_US[m.group(2)]


def parse_run(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    m = re.search(r"^BENCH_RESULT (.*)$", text, re.M)
    if m:
        kv = dict(item.split("=", 1) for item in m.group(1).split())
        sock = sum(int(float(kv[k])) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
        return {
            "rps": float(kv["rps"]),
            "bps": float(kv["bps"]),
            "p99_us": float(kv["p99_us"]),
            "p50_us": float(kv["p50_us"]),
            "requests": int(float(kv["requests"])),
            "bytes": int(float(kv["bytes"])),
            "sock_errors": sock,
            "status_errors": int(float(kv["err_status"])),
            "source": "lua",
            "duration_s": float(kv["duration_us"]) / 1e6,
        }
    # Fallback: wrk's human-readable output.
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    tps = re.search(r"^Transfer/sec:\s*(\S+)", text, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+(\S+)", text, re.M)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+(\S+)", text, re.M)
    reqs = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+), (\S+) read", text, re.M)
    if not (rps and tps and p99):
        raise SystemExit(f"could not find results in {path}")
    sock = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        sock = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    status = int(m.group(1)) if m else 0
    return {
        "rps": float(rps.group(1)),
        "bps": parse_binary(tps.group(1)),
        "p99_us": parse_time_us(p99.group(1)),
        "p50_us": parse_time_us(p50.group(1)) if p50 else float("nan"),
        "requests": int(reqs.group(1)) if reqs else 0,
        "bytes": int(parse_binary(reqs.group(3))) if reqs else 0,
        "sock_errors": sock,
        "status_errors": status,
        "source": "text",
        "duration_s": parse_time_us(reqs.group(2)) / 1e6 if reqs else float("nan"),
    }


FIELDS = ("rps", "bps", "p99_us", "p50_us", "requests", "bytes", "sock_errors", "status_errors", "source",
          "duration_s")


def cmd_parse(path):
    r = parse_run(path)
    print("\t".join(str(r[k]) for k in FIELDS))


def fmt(x, digits=2):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ratio(a, b):
    # A growth of zero or less (nginx's preallocated connections) has no meaningful ratio.
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def load_results(path, clk_tck):
    rows = []
    for p in read_tsv(path):
        r = {"scenario": p[0], "round": int(p[1]), "server": p[2]}
        for k, v in zip(FIELDS, p[3:13]):
            r[k] = v if k == "source" else float(v)
        r["user_ticks"], r["sys_ticks"], r["log_bytes"] = int(p[13]), int(p[14]), int(p[15])
        n = r["requests"]
        r["cpu_us"] = (r["user_ticks"] + r["sys_ticks"]) / clk_tck / n * 1e6 if n else None
        r["user_us"] = r["user_ticks"] / clk_tck / n * 1e6 if n else None
        r["sys_us"] = r["sys_ticks"] / clk_tck / n * 1e6 if n else None
        rows.append(r)
    return rows


def table(header, rows, left=1):
    """A markdown table; the first `left` columns are text, the others numbers."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * left + "---:|" * (len(header) - left))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def cmd_report(results_path, rss_path, idle_path, gets_path, logs_path, clk_tck):
    rows = load_results(results_path, clk_tck)
    rss = {p[0]: {"total_kib": int(p[1]), "max_single_kib": int(p[2]), "nprocs": int(p[3])}
           for p in read_tsv(rss_path)}

    def med(scenario, server, key):
        vals = [r[key] for r in rows if r["server"] == server and r["scenario"] == scenario and r[key] is not None]
        return statistics.median(vals) if vals else None

    def per(x, d):
        return None if x is None else x / d

    print("### Raw per-round results")
    print()
    print("CPU: user + system time of the server's processes during the run, per request. Log bytes:")
    print("growth of the server's log (originpull's stderr, nginx's error log) during the run.")
    print()
    table(["scenario", "round", "server", "req/s", "MiB/s", "p50 (ms)", "p99 (ms)", "requests",
           "CPU µs/req (user + sys)", "log bytes", "socket errors", "status errors"],
          [[r["scenario"], str(r["round"]), r["server"], f"{r['rps']:.1f}", f"{r['bps'] / MIB:.1f}",
            f"{r['p50_us'] / 1000:.3f}", f"{r['p99_us'] / 1000:.3f}", f"{r['requests']:.0f}",
            "n/a" if r["cpu_us"] is None else f"{r['cpu_us']:.1f} ({r['user_us']:.1f} + {r['sys_us']:.1f})",
            str(r["log_bytes"]), f"{r['sock_errors']:.0f}", f"{r['status_errors']:.0f}"] for r in rows], left=3)

    nrounds = len({r["round"] for r in rows})
    present = {r["scenario"] for r in rows}
    main_rows = []
    for sc, label, mib in MAIN:
        if sc not in present:
            continue
        if mib:
            metrics = [(f"{label}, MiB/s (higher is better)", lambda s, sc=sc: per(med(sc, s, "bps"), MIB))]
        else:
            metrics = [(f"{label}, req/s (higher is better)", lambda s, sc=sc: med(sc, s, "rps"))]
        metrics += [
            (f"{label}, p99 ms (lower is better)", lambda s, sc=sc: per(med(sc, s, "p99_us"), 1000)),
            (f"{label}, CPU µs/request (lower is better)", lambda s, sc=sc: med(sc, s, "cpu_us")),
        ]
        for name, fn in metrics:
            a, b, c = fn("originpull"), fn("nginx"), fn("pingora")
            main_rows.append([name, fmt(a), fmt(b), ratio(a, b), fmt(c), ratio(a, c)])
    for name, key in (("peak RSS MiB, all processes (VmHWM sum)", "total_kib"),
                      ("peak RSS MiB, largest single process", "max_single_kib")):
        a, b = (per(rss.get(s, {}).get(key), 1024) for s in ("originpull", "nginx"))
        if a is not None or b is not None:
            main_rows.append([name, fmt(a), fmt(b), ratio(a, b), "", ""])
    if main_rows:
        print(f"### Medians over {nrounds} round(s)")
        print()
        print("nginx is tuned for static files (sendfile, open_file_cache sized for the objects, errors")
        print("cached, gzip_static, brotli_static); the floor is examples/bare_pingora (a constant 4 KiB")
        print("body or 302 with originpull's header set, on mimalloc, on originpull's listener code).")
        print()
        table(["metric", "originpull", "nginx (tuned)", "originpull/nginx", "floor", "originpull/floor"], main_rows)

    if "mirror_cold" in present:
        gets = {}
        for p in read_tsv(gets_path):
            gets.setdefault(p[1], []).append(p[2])
        servers = ("originpull", "nginx", "varnish")
        mirror = [
            ("cold set: time s (lower is better)", "mirror_cold", "duration_s", 1),
            ("cold set: p99 ms per request (lower is better)", "mirror_cold", "p99_us", 1000),
            ("cold set: CPU µs/request (lower is better)", "mirror_cold", "cpu_us", 1),
            ("warm: req/s (higher is better)", "mirror_warm", "rps", 1),
            ("warm: p99 ms (lower is better)", "mirror_warm", "p99_us", 1000),
            ("warm: CPU µs/request (lower is better)", "mirror_warm", "cpu_us", 1),
        ]
        out = []
        for name, sc, key, d in mirror:
            a, b, c = (per(med(sc, s, key), d) for s in servers)
            out.append([name, fmt(a), fmt(b), fmt(c), ratio(a, b), ratio(a, c)])
        out.append(["cold set: origin GETs per round", *(", ".join(gets.get(s, [])) or "n/a" for s in servers),
                    "", ""])
        print(f"### Mirror mode: cold set and warm hits, medians over {nrounds} round(s)")
        print()
        print("Each server starts every round with an empty cache and asks the same loopback nginx origin;")
        print("the cold set asks for each key once; warm is wrk over the same keys at random, right after.")
        print("originpull runs `mode: mirror`; nginx `proxy_cache` + `proxy_cache_lock` (upstream")
        print("keepalive); Varnish `-s malloc,256m` with its default VCL. CPU is counted in clock ticks")
        cold = min(r["requests"] for r in rows if r["scenario"] == "mirror_cold") or 1
        print(f"of {1000 / clk_tck:.0f} ms: over a cold set of {cold:.0f} requests, steps of "
              f"{1e6 / clk_tck / cold:.0f} µs per request.")
        print()
        table(["metric", "originpull", "nginx proxy_cache", "Varnish", "originpull/nginx", "originpull/Varnish"],
              out)

    if "s3_hit4k" in present:
        out = []
        for name, key, d in (("4 KiB hit req/s (higher is better)", "rps", 1),
                             ("4 KiB hit p99 ms (lower is better)", "p99_us", 1000),
                             ("4 KiB hit CPU µs/request of originpull (lower is better)", "cpu_us", 1)):
            a, b = (per(med("s3_hit4k", s, key), d) for s in ("originpull", "disk_store"))
            out.append([name, fmt(a), fmt(b), ratio(a, b)])
        print(f"### S3 store (moto) against the disk store, memory tier on, medians over {nrounds} round(s)")
        print()
        print("Two originpull processes, the same object, alternating rounds. moto is a Python server")
        print("serialised by one lock: what reaches it is paid at its speed.")
        print()
        table(["metric", "S3 store", "disk store", "S3/disk"], out)

    idle = read_tsv(idle_path)
    if idle:
        by = {p[0]: [int(x) for x in p[1:]] for p in idle}
        n = next(iter(by.values()))[0]

        def row(name, fn, digits=1):
            vals = [fn(*by[s][1:]) if s in by else None for s in ("originpull", "nginx")]
            return [name, *(fmt(v, digits) for v in vals), ratio(*vals) if digits else ""]

        print(f"### {n} idle keep-alive connections (one GET /obj4k each)")
        print()
        table(["metric", "originpull", "nginx", "originpull/nginx"], [
            row("processes measured", lambda procs, before, with_, closed: procs, digits=0),
            row("RSS before, KiB", lambda procs, before, with_, closed: before),
            row(f"RSS with {n} idle connections, KiB", lambda procs, before, with_, closed: with_),
            row("KiB per idle connection (lower is better)", lambda procs, before, with_, closed: (with_ - before) / n),
            row("KiB per connection still held 2 s after closing", lambda procs, before, with_, closed: (closed - before) / n),
        ])

    logs = read_tsv(logs_path)
    if logs:
        print("### Logs written in the whole run")
        print()
        table(["instance", "file", "bytes", "lines"], [[p[0], p[1], p[2], p[3]] for p in logs], left=2)

    if any(r["sock_errors"] or r["status_errors"] for r in rows):
        print("**Warning:** some runs had errors (see raw table); their numbers may not be comparable.")


def main(argv):
    if len(argv) == 3 and argv[1] == "parse":
        cmd_parse(argv[2])
    elif len(argv) == 8 and argv[1] == "report":
        cmd_report(*argv[2:7], int(argv[7]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
