#!/usr/bin/env bash
# Scanner benchmark (issue #13), all on 127.0.0.1: a client asks for KEYS distinct missing keys
# (1,000,000 by default) well within fill.negative_ttl_secs, against an nginx origin that
# answers 404 to everything. Every miss is redirected and asks for a copy, so each per-key table
# (single flight, copy queue, negative cache) is pushed to its cap. Prints originpull's peak
# RSS (target: under 128 MiB) and the requests by status.
#
# Usage: benches/scanner.sh   (KEYS=1000000 by default). Needs nginx, wrk and curl.
set -euo pipefail

KEYS=${KEYS:-1000000}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=scanner
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
need wrk wrk
need curl curl
originpull_bin

make_work scan

ORIGIN_PORT=$(free_port); OP_PORT=$(free_port); METRICS_PORT=$(free_port)
start_nginx "access_log off;" "server { listen 127.0.0.1:$ORIGIN_PORT; location / { return 404; } }"
mkdir -p "$WORK/data"
{ originpull_config_head; cat <<EOF
fill: {negative_ttl_secs: 3600}
buckets:
  - name: bench-1250000000
    origin_pull: {enabled: true, origin: '127.0.0.1:$ORIGIN_PORT'}
EOF
} >"$WORK/originpull.yaml"
RUST_LOG=error "$OP_BIN" -c "$WORK/originpull.yaml" >>"$WORK/originpull.log" 2>&1 &
OP_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && break; sleep 0.1; done

THREADS=2
cat >"$WORK/scan.lua" <<EOF
local per_thread = math.floor($KEYS / $THREADS)
local counter = 0
local id = 0
setup = function(thread) thread:set("id", counter); counter = counter + 1 end
init = function() n = 0; answered = 0 end
request = function()
  n = n + 1
  return wrk.format("GET", "/scan/" .. id .. "/" .. n .. ".php", {Host = "bench-1250000000.bench.local"})
end
-- Counting answers, not requests sent: each thread stops once its share is answered, so the
-- total answered reaches KEYS and the wait below ends.
response = function()
  answered = answered + 1
  if answered >= per_thread then wrk.thread:stop() end
end
EOF
before=$(rss_kib "$OP_PID"); peak=$before
wrk -t"$THREADS" -c64 -d600s -s "$WORK/scan.lua" "http://127.0.0.1:$OP_PORT/" >"$WORK/wrk.txt" 2>&1 &
WRK_PID=$!
# wrk's threads stop themselves after their share of keys, but wrk itself waits out -d: stop it
# once originpull has answered every key.
answered() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '/^originpull_requests_total\{bucket="bench-1250000000"/ {s += $2} END {print s + 0}'
}
while kill -0 "$WRK_PID" 2>/dev/null; do
  r=$(rss_kib "$OP_PID"); [ "$r" -gt "$peak" ] && peak=$r
  if [ "$(answered)" -ge "$KEYS" ]; then kill "$WRK_PID" 2>/dev/null || true; fi
  sleep 0.2
done
sleep 2; r=$(rss_kib "$OP_PID"); [ "$r" -gt "$peak" ] && peak=$r
metrics=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics")
echo "## Scanner: $KEYS distinct missing keys ($(nproc) cores, $(uname -r))"
echo
echo "| metric | value | target |"
echo "|---|---|---|"
echo "| RSS before (MiB) | $(( before / 1024 )) | |"
echo "| peak RSS (MiB) | $(( peak / 1024 )) | < 128 |"
echo "$metrics" | awk '/^originpull_requests_total\{bucket="bench-1250000000"/ && $2 > 0 {print "| requests " $1 " | " $2 " | |"}'
echo "$metrics" | awk '/^originpull_fills_total\{bucket="bench-1250000000"/ && $2 > 0 {print "| fills " $1 " | " $2 " | |"}'
