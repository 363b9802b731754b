#!/usr/bin/env bash
# Mirror-mode memory benchmark, all on 127.0.0.1: a cold 1 GiB object is mirrored to CLIENTS
# slow clients at once (each reading at RATE with curl --limit-rate) from a loopback nginx
# origin. Prints the resident memory originpull adds (peak VmRSS minus before), the origin
# GETs made (must be 1) and whether every client got the whole object (md5).
#
# Usage: benches/mirror_1gib.sh   (SIZE_MIB=1024 CLIENTS=8 RATE=40M by default)
# Needs nginx and curl (installed from Debian when missing).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
CLIENTS=${CLIENTS:-8}
RATE=${RATE:-40M}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)

BENCH=mirror_1gib
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
need curl curl
originpull_bin

make_work mirror

ORIGIN_PORT=$(free_port); OP_PORT=$(free_port); METRICS_PORT=$(free_port)
mkdir -p "$WORK/www" "$WORK/data" "$WORK/out"
log "writing a ${SIZE_MIB} MiB object"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/www/big.bin"
chmod 644 "$WORK/www/big.bin"
EXPECTED=$(md5sum "$WORK/www/big.bin" | cut -d' ' -f1)
start_nginx "log_format counted '\$request'; access_log $WORK/origin-access.log counted; sendfile on; tcp_nopush on;" \
  "server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; }"

HOST=bench-1250000000.bench.local
{ originpull_config_head; cat <<EOF
fill: {max_object_bytes: 5368709120, read_timeout_ms: 60000}
buckets:
  - name: bench-1250000000
    origin_pull: {enabled: true, mode: mirror, origin: '127.0.0.1:$ORIGIN_PORT'}
EOF
} >"$WORK/originpull.yaml"
RUST_LOG=warn "$OP_BIN" -c "$WORK/originpull.yaml" >>"$WORK/originpull.log" 2>&1 &
OP_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && break; sleep 0.1; done
sleep 0.5

before=$(rss_kib "$OP_PID"); peak=$before
started=$(date +%s.%N)
pids=()
for i in $(seq "$CLIENTS"); do
  curl -s --limit-rate "$RATE" -o "$WORK/out/$i" -H "Host: $HOST" "http://127.0.0.1:$OP_PORT/big.bin" & pids+=($!)
done
while :; do
  running=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
  [ "$running" = 1 ] || break
  r=$(rss_kib "$OP_PID"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.05
done
wait "${pids[@]}" || true
elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
whole=0
for i in $(seq "$CLIENTS"); do
  [ "$(md5sum "$WORK/out/$i" | cut -d' ' -f1)" = "$EXPECTED" ] && whole=$((whole + 1))
  rm -f "$WORK/out/$i"
done
origin_gets=$(grep -c 'GET /big.bin' "$WORK/origin-access.log" || true)

echo "## Mirror mode: cold ${SIZE_MIB} MiB object to $CLIENTS clients at $RATE/s each ($(nproc) cores, $(uname -r))"
echo
echo "| metric | value | target |"
echo "|---|---|---|"
echo "| RSS added while mirroring (MiB) | $(( (peak - before) / 1024 )) | < 64 |"
echo "| origin GETs | $origin_gets | 1 |"
echo "| clients with the whole object (md5) | $whole / $CLIENTS | all |"
echo "| wall time (s) | $elapsed | |"
