#!/usr/bin/env python3
"""Helper for benches/side_by_side.sh (not meant to be run by hand).

  side_by_side_report.py parse WRK_LOG
      Print one tab-separated line "rps bps p99_us p50_us requests bytes
      sock_errors status_errors source" for one wrk run.  Prefers the
      BENCH_RESULT line written by the generated wrk Lua script (exact
      numbers from wrk's summary); falls back to parsing wrk's text output
      (Requests/sec, Transfer/sec, Latency Distribution 99%).

  side_by_side_report.py report RESULTS_TSV RSS_TSV
      Print the per-round raw numbers and the markdown table of medians.
      RESULTS_TSV columns: scenario round server rps bps p99_us p50_us
      requests bytes sock_errors status_errors source
      RSS_TSV columns: server total_kib max_single_kib nprocs
"""

import re
import statistics
import sys

SERVERS = ("originpull", "nginx", "pingora")
SCENARIOS = ("hit4k", "hit1m", "hitjs_gzip", "redirect")
MIB = 1024.0 * 1024.0

BIN_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}
TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


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


def parse_wrk(path):
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
        }
    # Fallback: wrk's human-readable output.
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    tps = re.search(r"^Transfer/sec:\s*(\S+)", text, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+(\S+)", text, re.M)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+(\S+)", text, re.M)
    reqs = re.search(r"^\s*(\d+) requests in .*?, (\S+) read", text, re.M)
    if not (rps and tps and p99):
        raise SystemExit(f"could not find wrk results in {path}")
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
        "bytes": int(parse_binary(reqs.group(2))) if reqs else 0,
        "sock_errors": sock,
        "status_errors": status,
        "source": "text",
    }


def cmd_parse(path):
    r = parse_wrk(path)
    print("\t".join(str(r[k]) for k in (
        "rps", "bps", "p99_us", "p50_us", "requests", "bytes", "sock_errors", "status_errors", "source")))


def fmt(x, digits=2):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def cmd_report(results_path, rss_path):
    rows = []
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            p = line.rstrip("\n").split("\t")
            rows.append({
                "scenario": p[0], "round": int(p[1]), "server": p[2],
                "rps": float(p[3]), "bps": float(p[4]), "p99_us": float(p[5]), "p50_us": float(p[6]),
                "requests": int(p[7]), "bytes": int(p[8]),
                "sock_errors": int(p[9]), "status_errors": int(p[10]), "source": p[11],
            })
    rss = {}
    with open(rss_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            p = line.rstrip("\n").split("\t")
            rss[p[0]] = {"total_kib": int(p[1]), "max_single_kib": int(p[2]), "nprocs": int(p[3])}

    print("### Raw per-round results")
    print()
    print("| scenario | round | server | req/s | MiB/s | p50 (ms) | p99 (ms) | requests | socket errors | status errors (>=400) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['round']} | {r['server']} | {r['rps']:.1f} | {r['bps'] / MIB:.1f} | "
              f"{r['p50_us'] / 1000:.3f} | {r['p99_us'] / 1000:.3f} | {r['requests']} | "
              f"{r['sock_errors']} | {r['status_errors']} |")
    print()

    def med(server, scenario, key):
        vals = [r[key] for r in rows if r["server"] == server and r["scenario"] == scenario]
        return statistics.median(vals) if vals else None

    metrics = [
        ("4 KiB hit req/s (higher is better)", lambda s: med(s, "hit4k", "rps")),
        ("4 KiB hit p99 ms (lower is better)", lambda s: _div(med(s, "hit4k", "p99_us"), 1000)),
        ("1 MiB hit MiB/s (higher is better)", lambda s: _div(med(s, "hit1m", "bps"), MIB)),
        ("1 MiB hit p99 ms (lower is better)", lambda s: _div(med(s, "hit1m", "p99_us"), 1000)),
        ("100 KB JS hit, gzip, req/s (higher is better)", lambda s: med(s, "hitjs_gzip", "rps")),
        ("100 KB JS hit, gzip, p99 ms (lower is better)", lambda s: _div(med(s, "hitjs_gzip", "p99_us"), 1000)),
        ("302 redirect req/s (higher is better)", lambda s: med(s, "redirect", "rps")),
        ("302 redirect p99 ms (lower is better)", lambda s: _div(med(s, "redirect", "p99_us"), 1000)),
        ("peak RSS MiB, all processes (VmHWM sum)", lambda s: _div(rss.get(s, {}).get("total_kib"), 1024)),
        ("peak RSS MiB, largest single process", lambda s: _div(rss.get(s, {}).get("max_single_kib"), 1024)),
    ]
    nrounds = len({r["round"] for r in rows})
    print(f"### Medians over {nrounds} round(s)")
    print()
    print("nginx is tuned for static files (sendfile, open_file_cache with errors); bare Pingora is")
    print("examples/bare_pingora (a constant 4 KiB body or 302 with originpull's header set, on")
    print("mimalloc), the floor of our own stack.")
    print()
    print("| metric | originpull | nginx (tuned) | originpull/nginx | bare Pingora | originpull/bare Pingora |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, fn in metrics:
        a, b, c = fn("originpull"), fn("nginx"), fn("pingora")
        print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} | {fmt(c)} | {ratio(a, c)} |")
    print()
    for s in SERVERS:
        if s in rss:
            print(f"- {s}: {rss[s]['nprocs']} process(es) measured for RSS")
    bad = [r for r in rows if r["sock_errors"] or (r["status_errors"])]
    if bad:
        print()
        print("**Warning:** some runs had errors (see raw table); their numbers may not be comparable.")


def _div(x, d):
    return None if x is None else x / d


def main(argv):
    if len(argv) == 3 and argv[1] == "parse":
        cmd_parse(argv[2])
    elif len(argv) == 4 and argv[1] == "report":
        cmd_report(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
