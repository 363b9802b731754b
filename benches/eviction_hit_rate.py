#!/usr/bin/env python3
"""Helper for benches/eviction_hit_rate.sh (stdlib only; not meant to be run by hand).

  eviction_hit_rate.py setup WORK N R SEED
      Write the N origin objects (WORK/origin/o/<i>.bin, size_of(i) bytes) and the trace
      (WORK/trace.txt, R object numbers, one a line); print the N objects' total bytes.

  eviction_hit_rate.py lru WORK CACHE_BYTES
      Replay the trace offline through an exact LRU by bytes, and one that evicts down to 95%
      once past the limit (originpull's watermark); print JSON.

  eviction_hit_rate.py replay WORK PORT HOST CLIENTS
      Replay the trace against 127.0.0.1:PORT over CLIENTS keep-alive HTTP/1.1 connections
      (client k asks for requests k, k+CLIENTS, ...), check every answer, count them by their
      X-Cache header; print JSON.

  eviction_hit_rate.py report WORK
      Read what the others and the shell script left in WORK (the replays' and the LRU's JSON,
      originpull's metrics before and after the replay and at the end) and the run's parameters
      from the environment (N R SEED CLIENTS CACHE_PERCENT CACHE_BYTES TOTAL_BYTES MACHINE
      NGINX_VERSION OP_DISK NGINX_DISK); print the markdown report.
"""

import http.client
import itertools
import json
import os
import random
import sys
import threading
import time
from collections import Counter, OrderedDict

ZIPF_S = 0.9
BUCKET = "hr-1250000000"
TIMEOUT = 10  # seconds, per connect / send / read of every request


def size_of(i):
    return 1024 + (i * 7919 % 3073)  # 1 KiB .. 4 KiB, deterministic


def path_of(i):
    return f"/o/{i}.bin"


def read_trace(work):
    with open(os.path.join(work, "trace.txt")) as f:
        return [int(line) for line in f]


def cmd_setup(work, n, r, seed):
    root = os.path.join(work, "origin", "o")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    total = 0
    for i in range(n):
        size = size_of(i)
        line = f"object {i}\n".encode()
        with open(os.path.join(root, f"{i}.bin"), "wb") as f:
            f.write((line * (size // len(line) + 1))[:size])
        total += size
    rng = random.Random(seed)
    # Popularity rank -> object number: a fixed shuffle, so hot objects are not 0, 1, 2...
    perm = list(range(n))
    rng.shuffle(perm)
    cum = list(itertools.accumulate(1 / (rank + 1) ** ZIPF_S for rank in range(n)))
    ranks = rng.choices(range(n), cum_weights=cum, k=r)
    with open(os.path.join(work, "trace.txt"), "w") as f:
        f.write("".join(f"{perm[k]}\n" for k in ranks))
    print(total)


def lru(trace, cap, low):
    """Hits and hit bytes of an LRU by bytes that, past cap, evicts down to low."""
    cache, used, hits, hit_bytes = OrderedDict(), 0, 0, 0
    for i in trace:
        if i in cache:
            cache.move_to_end(i)
            hits += 1
            hit_bytes += size_of(i)
            continue
        cache[i] = None
        used += size_of(i)
        if used > cap:
            while used > low:
                old, _ = cache.popitem(last=False)
                used -= size_of(old)
    return hits, hit_bytes


def cmd_lru(work, cache_bytes):
    trace = read_trace(work)
    total_bytes = sum(size_of(i) for i in trace)
    out = {"requests": len(trace), "bytes": total_bytes}
    for name, low in (("exact", cache_bytes), ("watermark95", cache_bytes * 95 // 100)):
        hits, hit_bytes = lru(trace, cache_bytes, low)
        out[name] = {"hits": hits, "hit_bytes": hit_bytes}
    print(json.dumps(out))


def cmd_replay(work, port, host, clients):
    trace = read_trace(work)
    results = [None] * clients

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        by_cache, bytes_by_cache, bad, errors, retries = Counter(), Counter(), Counter(), 0, 0
        for i in trace[k::clients]:
            for attempt in (1, 2):
                try:
                    conn.request("GET", path_of(i), headers={"Host": host})
                    resp = conn.getresponse()
                    body = resp.read()
                    break
                except (OSError, http.client.HTTPException) as e:
                    # A failed request is retried once on a new connection (a keep-alive
                    # connection the server closed as we sent); a second failure counts.
                    conn.close()
                    if attempt == 2:
                        errors += 1
                        bad[f"error {type(e).__name__}"] += 1
                        resp = None
                    else:
                        retries += 1
            if resp is None:
                continue
            if resp.status != 200 or len(body) != size_of(i):
                bad[f"{resp.status} len {len(body)} (want {size_of(i)})"] += 1
                continue
            tag = resp.getheader("X-Cache", "-")
            by_cache[tag] += 1
            bytes_by_cache[tag] += len(body)
        conn.close()
        results[k] = (by_cache, bytes_by_cache, bad, errors, retries)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    out = {"requests": len(trace), "seconds": elapsed, "rps": len(trace) / elapsed,
           "x_cache": Counter(), "x_cache_bytes": Counter(), "bad": Counter(), "retries": 0}
    for by_cache, bytes_by_cache, bad, _errors, retries in results:
        out["x_cache"].update(by_cache)
        out["x_cache_bytes"].update(bytes_by_cache)
        out["bad"].update(bad)
        out["retries"] += retries
    out["ok"] = sum(out["x_cache"].values())
    out["bytes"] = sum(out["x_cache_bytes"].values())
    print(f"  {out['ok']} of {len(trace)} ok in {elapsed:.1f} s ({out['rps']:.0f} req/s), "
          f"X-Cache {dict(out['x_cache'])}, bad {dict(out['bad'])}, retries {out['retries']}",
          file=sys.stderr)
    print(json.dumps(out))


def parse_metrics(path):
    """Prometheus text -> {(name, ((label, value), ...)): value}."""
    out = {}
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            series, value = line.rsplit(None, 1)
            name, _, labels = series.partition("{")
            pairs = []
            for item in labels.rstrip("}").split('",') if labels else []:
                k, _, v = item.partition("=")
                pairs.append((k.strip(), v.strip().strip('"')))
            out[(name, tuple(sorted(pairs)))] = float(value)
    return out


def metric(m, name, **labels):
    """Sum of the series of NAME whose labels include LABELS."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


def pct(part, whole):
    return f"{100 * part / whole:.2f}%" if whole else "n/a"


def samples(path):
    """'mean% / peak% of CACHE_BYTES' of the sizes sampled during a replay."""
    with open(path) as f:
        xs = [float(line) for line in f if line.strip()]
    cap = int(os.environ["CACHE_BYTES"])
    if not xs:
        return "no samples"
    return (f"mean {100 * sum(xs) / len(xs) / cap:.0f}%, peak {100 * max(xs) / cap:.0f}% "
            f"of CACHE_BYTES ({len(xs)} samples)")


def cmd_report(work):
    def load(name):
        with open(os.path.join(work, name)) as f:
            return json.load(f)

    params, lru_res = os.environ, load("lru.json")
    op, ngx = load("originpull-replay.json"), load("nginx-replay.json")
    before = parse_metrics(os.path.join(work, "originpull-metrics-before.txt"))
    after = parse_metrics(os.path.join(work, "originpull-metrics-after.txt"))
    end = parse_metrics(os.path.join(work, "originpull-metrics-end.txt"))

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    notes = []
    requests, req_bytes = lru_res["requests"], lru_res["bytes"]

    # originpull: result="hit" is a hit; result="mirror" is a leader streaming its own copy
    # from the origin or a follower that waited for another request's copy (the LRU and
    # nginx's proxy_cache_lock count the latter as hits). Copies = origin GETs.
    hits = delta("originpull_requests_total", bucket=BUCKET, result="hit")
    mirrors = delta("originpull_requests_total", bucket=BUCKET, result="mirror")
    all_results = delta("originpull_requests_total", bucket=BUCKET)
    stored = delta("originpull_fills_total", bucket=BUCKET, outcome="stored")
    fills = delta("originpull_fills_total", bucket=BUCKET)
    fill_bytes = delta("originpull_fill_bytes_total", bucket=BUCKET)
    # fill_bytes counts stored copies only: it is every byte fetched when every copy stored.
    op_byte_hit = pct(req_bytes - fill_bytes, req_bytes) if stored == fills else "n/a"
    if stored != fills:
        notes.append(f"originpull: {fills:.0f} copies, only {stored:.0f} stored")
    if hits + mirrors != requests or all_results != requests:
        notes.append(f"originpull: hit {hits:.0f} + mirror {mirrors:.0f} = {hits + mirrors:.0f}, "
                     f"all results {all_results:.0f}, trace {requests} requests")
    other = {dict(ls).get("result"): after[(n, ls)] - before.get((n, ls), 0) for (n, ls) in after
             if n == "originpull_requests_total" and dict(ls).get("bucket") == BUCKET}
    other = {k: v for k, v in other.items() if v and k not in ("hit", "mirror")}
    if other:
        notes.append(f"originpull: other results for the bucket: {other}")

    # nginx: by the X-Cache ($upstream_cache_status) of each answer.
    ngx_hits, ngx_hit_bytes = ngx["x_cache"].get("HIT", 0), ngx["x_cache_bytes"].get("HIT", 0)
    ngx_tags = {k: v for k, v in ngx["x_cache"].items() if k not in ("HIT", "MISS")}
    if ngx_tags:
        notes.append(f"nginx: X-Cache other than HIT/MISS: {ngx_tags}")

    for name, r in (("originpull", op), ("nginx", ngx)):
        if r["ok"] != requests or r["bad"]:
            notes.append(f"{name}: {r['ok']} of {requests} answers were 200 of the right length; "
                         f"others: {dict(r['bad'])}")
        if r["retries"]:
            notes.append(f"{name}: {r['retries']} requests retried on a new connection")

    exact, wm = lru_res["exact"], lru_res["watermark95"]
    print(f"## Eviction hit rate: Zipf(s={ZIPF_S}) trace, cache of {params['CACHE_PERCENT']}% "
          f"of the objects' bytes")
    print()
    for k in ("N", "R", "CACHE_BYTES", "CLIENTS", "SEED"):
        print(f"- {k} = {params[k]}")
    print(f"- objects: {params['TOTAL_BYTES']} bytes in all, 1024..4096 bytes each; "
          f"trace: {requests} requests, {req_bytes} bytes")
    print(f"- machine: {params['MACHINE']}; nginx {params['NGINX_VERSION']}")
    print()
    print("| cache | object hit rate | byte hit rate | requests/s |")
    print("|---|---|---|---|")
    print(f"| exact LRU (offline) | {pct(exact['hits'], requests)} | "
          f"{pct(exact['hit_bytes'], req_bytes)} | - |")
    print(f"| LRU evicting to 95% (offline) | {pct(wm['hits'], requests)} | "
          f"{pct(wm['hit_bytes'], req_bytes)} | - |")
    print(f"| originpull (result=\"hit\") | {pct(hits, requests)} | - | {op['rps']:.0f} |")
    print(f"| originpull (no origin GET of its own: 1 - copies/R) | "
          f"{pct(requests - fills, requests)} | {op_byte_hit} | {op['rps']:.0f} |")
    print(f"| nginx proxy_cache (X-Cache: HIT) | {pct(ngx_hits, requests)} | "
          f"{pct(ngx_hit_bytes, req_bytes)} | {ngx['rps']:.0f} |")
    print()
    ev = metric(end, "originpull_evictions_total", bucket=BUCKET)
    ev_bytes = metric(end, "originpull_evicted_bytes_total", bucket=BUCKET)
    store = metric(end, "originpull_store_bytes")
    objs = metric(end, "originpull_bucket_objects", bucket=BUCKET)
    print(f"- originpull: hit {hits:.0f}, mirror {mirrors:.0f}, copies {fills:.0f} "
          f"({stored:.0f} stored, {fill_bytes:.0f} bytes); 2 s after the replay: "
          f"originpull_evictions_total {ev:.0f} ({ev_bytes:.0f} bytes), "
          f"originpull_store_bytes {store:.0f} ({pct(store, int(params['CACHE_BYTES']))} of "
          f"max_bytes), originpull_bucket_objects {objs:.0f}; data_dir: {params['OP_DISK']}")
    print(f"- originpull_store_bytes during the replay: "
          f"{samples(os.path.join(work, 'originpull-samples.txt'))}")
    print(f"- nginx: X-Cache {dict(ngx['x_cache'])}; cache dir 2 s after the replay: "
          f"{params['NGINX_DISK']}")
    print(f"- nginx cache files' bytes during the replay: "
          f"{samples(os.path.join(work, 'nginx-samples.txt'))} (nginx holds max_size against "
          f"file system blocks, cache file headers included)")
    print(f"- replay wall time: originpull {op['seconds']:.1f} s, nginx {ngx['seconds']:.1f} s; "
          f"the Python client shares the cores with the servers and is likely the limit "
          f"of requests/s")
    for n in notes:
        print(f"- **{n}**")


def main(argv):
    cmd, a = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if cmd == "setup" and len(a) == 4:
        cmd_setup(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif cmd == "lru" and len(a) == 2:
        cmd_lru(a[0], int(a[1]))
    elif cmd == "replay" and len(a) == 4:
        cmd_replay(a[0], int(a[1]), a[2], int(a[3]))
    elif cmd == "report" and len(a) == 1:
        cmd_report(a[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
