#!/usr/bin/env bash
# Hits of a `retention: cache` bucket while eviction runs, against the same hits with nothing
# to evict (issue #24): req/s and CPU per request (benches/cpu_per_request.sh).
#
# One origin (nginx, sendfile) holds HOT objects of 4 KiB (h/...) and CHURN_KEYS more (c/...).
# Two originpulls take turns on it, each with its own data dir, the memory tier at its default:
#   idle      store.max_bytes far above what is ever stored: nothing is evicted;
#   evicting  store.max_bytes a fifth above the hot set: every object the churn copies in
#             pushes the store past the limit, and eviction deletes the least recently used.
# Each first copies the hot set in (mirror mode), then HOT/4 more objects (p/...), which take the
# evicting one past its limit; then, per round, wrk asks for hot objects at
# random (benches/wrk/random_keys.lua, -c 64) while a churn client asks for new keys at about
# CHURN per second (mirror misses: copies and, for `evicting`, evictions). Rounds alternate.
#
# Usage: benches/eviction_hits.sh
#   HOT=20000 CHURN=200 CHURN_KEYS=20000 ROUNDS=3 DURATION=10 ORIGINPULL_BIN=...
# Output (stdout): a markdown table of medians; per-round lines on stderr.
set -euo pipefail
HOT=${HOT:-20000} CHURN=${CHURN:-200} CHURN_KEYS=${CHURN_KEYS:-20000}
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10}
BENCH=eviction_hits
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"
need wrk wrk
originpull_bin
make_work eviction-hits
LOAD="$HERE/side_by_side_load.py"
SIZE=4096

log "writing $HOT hot and $CHURN_KEYS churn objects"
python3 "$LOAD" objects "$WORK/origin" h/ "$HOT" "$SIZE" >/dev/null
python3 "$LOAD" objects "$WORK/origin" c/ "$CHURN_KEYS" "$SIZE" >/dev/null
# What takes the evicting server past its limit before the first round.
PAST=$((HOT / 4))
python3 "$LOAD" objects "$WORK/origin" p/ "$PAST" "$SIZE" >/dev/null
ORIGIN_PORT=$(free_port)
start_nginx "access_log off; sendfile on;" "server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/origin; }"

# A stored 4 KiB object is its body and a trailer of about 300 bytes.
HOT_BYTES=$((HOT * (SIZE + 400)))
declare -A PIDS=() PORTS=() METRICS=()
start_originpull() {  # NAME MAX_BYTES
  local name=$1 dir="$WORK/$1"
  mkdir -p "$dir"
  OP_PORT=$(free_port) METRICS_PORT=$(free_port)
  {
    originpull_config_head | sed "s|data_dir: .*|data_dir: $dir/data|"
    cat <<EOF
store: {max_bytes: $2}
buckets:
  - name: ev-1250000000
    retention: cache
    origin_pull: {enabled: true, mode: mirror, origin: "127.0.0.1:$ORIGIN_PORT"}
EOF
  } >"$dir/originpull.yaml"
  "$OP_BIN" -c "$dir/originpull.yaml" >"$dir/log" 2>&1 &
  PIDS[$name]=$! PORTS[$name]=$OP_PORT METRICS[$name]=$METRICS_PORT
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && break; sleep 0.1; done
  python3 "$LOAD" cold "http://127.0.0.1:$OP_PORT" ev-1250000000.bench.local h/ "$HOT" "$SIZE" 8 >/dev/null
  python3 "$LOAD" cold "http://127.0.0.1:$OP_PORT" ev-1250000000.bench.local p/ "$PAST" "$SIZE" 8 >/dev/null
}
start_originpull idle $((HOT_BYTES * 100))
start_originpull evicting $((HOT_BYTES * 12 / 10))
trap 'kill "${PIDS[@]}" 2>/dev/null; cleanup_work' EXIT

churn() {  # PORT TAG: new keys at about CHURN per second until killed (exec: $! is python)
  exec python3 - "$1" "$2" "$CHURN" "$CHURN_KEYS" <<'EOF'
import http.client, sys, time
port, tag, rate, keys = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
start = (hash(tag) % keys)
for n in range(keys):
    i = (start + n) % keys
    conn.request("GET", f"/c/{i // 1000:03d}/{i:06d}.bin", headers={"Host": "ev-1250000000.bench.local"})
    conn.getresponse().read()
    time.sleep(1 / rate)
EOF
}

declare -A RESULTS=()
for r in $(seq "$ROUNDS"); do
  for name in idle evicting; do
    port=${PORTS[$name]}
    churn "$port" "$name$r" & churner=$!
    sleep 1
    line=$(SCRIPT="$HERE/wrk/random_keys.lua" SCRIPT_ARGS="h/ $HOT" DURATION=$DURATION \
      "$HERE/cpu_per_request.sh" "${PIDS[$name]}" "http://127.0.0.1:$port/" ev-1250000000.bench.local 1)
    kill "$churner" 2>/dev/null; wait "$churner" 2>/dev/null || true
    evicted=$(curl -s "http://127.0.0.1:${METRICS[$name]}/metrics" | awk '/^originpull_evictions_total/ { n += $2 } END { print n + 0 }')
    log "round $r $name: $line; evictions so far $evicted"
    RESULTS[$name]+="$line"$'\n'
  done
done
echo "| originpull | hits/s (median) | user µs/hit | system µs/hit |"
echo "|---|---|---|---|"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for name in idle evicting; do
  rps=$(printf '%s' "${RESULTS[$name]}" | awk '{ print $2 }' | median)
  user=$(printf '%s' "${RESULTS[$name]}" | awk '{ print $4 }' | median)
  sys=$(printf '%s' "${RESULTS[$name]}" | awk '{ print $7 }' | median)
  echo "| $name | $rps | $user | $sys |"
done
