#!/usr/bin/env bash
# Slow clients (issue #13), all on 127.0.0.1: DRIPPERS connections each send a request head one
# byte per second (a slowloris), and meanwhile one normal client sends REQUESTS GETs of a stored
# 4 KiB object, each on a new connection, one every 50 ms. Prints the normal client's latency
# (p50, p99, max; target: every request under 100 ms) and how many drippers the server cut off
# (server.header_timeout_secs, 15 s by default, ends each dripped head).
#
# Usage: benches/slow_clients.sh   (DRIPPERS=500 REQUESTS=400). Needs curl and python3.
set -euo pipefail

DRIPPERS=${DRIPPERS:-500}
REQUESTS=${REQUESTS:-400}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=slow_clients
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
need curl curl
need python3 python3
originpull_bin
ulimit -n "$(ulimit -Hn)"

make_work slow
ORIGIN_PORT=$(free_port); OP_PORT=$(free_port); METRICS_PORT=$(free_port)
HOST=bench-1250000000.bench.local
mkdir -p "$WORK/www" "$WORK/data"
head -c 4096 /dev/urandom >"$WORK/www/obj4k"
chmod -R a+rX "$WORK/www"
start_nginx "access_log off;" "server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; }"
{ originpull_config_head; cat <<EOF
buckets:
  - name: bench-1250000000
    origin_pull: {enabled: true, origin: '127.0.0.1:$ORIGIN_PORT'}
EOF
} >"$WORK/originpull.yaml"
RUST_LOG=warn "$OP_BIN" -c "$WORK/originpull.yaml" >>"$WORK/originpull.log" 2>&1 &
OP_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && break; sleep 0.1; done
curl -s -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$OP_PORT/obj4k"
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$OP_PORT/obj4k")" = 200 ] && break
  sleep 0.1
done

python3 - "$OP_PORT" "$HOST" "$DRIPPERS" "$REQUESTS" "$(nproc)" "$(uname -r)" <<'EOF'
import asyncio, sys, time

port, host, drippers, requests = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cores, kernel = sys.argv[5], sys.argv[6]
head = f"GET /obj4k HTTP/1.1\r\nHost: {host}\r\nUser-Agent: slowloris\r\n\r\n".encode()
cut_off = 0

async def drip():
    global cut_off
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for byte in head[:-1]:  # never completes the head
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)
    except (ConnectionError, OSError):
        cut_off += 1
    finally:
        writer.close()

async def normal_get():
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /obj4k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    elapsed = (time.monotonic() - start) * 1000
    if not data.startswith(b"HTTP/1.1 200") or len(data) < 4096:
        raise SystemExit(f"a normal request failed: {data[:80]!r}")
    return elapsed

async def main():
    drips = [asyncio.create_task(drip()) for _ in range(drippers)]
    await asyncio.sleep(2)  # every dripper connected and dripping
    latencies = []
    for _ in range(requests):
        latencies.append(await normal_get())
        await asyncio.sleep(0.05)
    await asyncio.gather(*drips, return_exceptions=True)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"## Slow clients: {drippers} connections dripping a head one byte per second "
          f"({cores} cores, {kernel})")
    print()
    print("| metric | value | target |")
    print("|---|---|---|")
    print(f"| normal GETs (4 KiB hit, new connection each) | {len(latencies)} | |")
    print(f"| latency p50 / p99 / max (ms) | {p(0.5):.2f} / {p(0.99):.2f} / {latencies[-1]:.2f} | max < 100 |")
    print(f"| drippers cut off by the server (header_timeout_secs) | {cut_off} of {drippers} | all |")
    sys.exit(0 if latencies[-1] < 100 else 1)

asyncio.run(main())
EOF
