#!/usr/bin/env bash
# Copy and memory benchmark with a 1 GiB object, all on 127.0.0.1:
#   copy      originpull's background copy of a 1 GiB object from a loopback nginx origin,
#             against `md5sum` of the same file from the page cache (MD5 is the ETag, so one
#             core's MD5 is the floor of a copy; target: copy <= 1.2x md5sum) and against
#             `curl -o /dev/null` of the same URL (the copy's time is originpull's own
#             originpull_fill_duration_seconds, which includes MD5, CRC-64, writing, fsync and
#             rename)
#   copy_rss  resident memory the copy adds (peak VmRSS during the copy minus before it)
#   serve_rss resident memory added while 8 clients download the stored 1 GiB object at once
#
# Usage: benches/copy_1gib.sh            (ROUNDS=3 copies and curls, alternating)
# Needs nginx and curl (installed from Debian when missing). Prints a markdown table.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
CLIENTS=${CLIENTS:-8}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)

BENCH=copy_1gib
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
need curl curl
originpull_bin

make_work copy

ORIGIN_PORT=$(free_port); OP_PORT=$(free_port); METRICS_PORT=$(free_port)
mkdir -p "$WORK/www" "$WORK/data"
log "writing a ${SIZE_MIB} MiB object"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/www/big.bin"
chmod 644 "$WORK/www/big.bin"
start_nginx "access_log off; sendfile on; tcp_nopush on;" "server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; }"

HOST=bench-1250000000.bench.local
start_originpull() {
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  { originpull_config_head; cat <<EOF
fill: {max_object_bytes: 5368709120, read_timeout_ms: 60000}
buckets:
  - name: bench-1250000000
    origin_pull: {enabled: true, origin: '127.0.0.1:$ORIGIN_PORT'}
EOF
  } >"$WORK/originpull.yaml"
  RUST_LOG=warn "$OP_BIN" -c "$WORK/originpull.yaml" >>"$WORK/originpull.log" 2>&1 &
  OP_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && return 0; sleep 0.1; done
  die "originpull did not start"
}
stop_originpull() { kill "$OP_PID"; wait "$OP_PID" 2>/dev/null || true; OP_PID=""; }
metric() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" 'index($1, m) == 1 {s+=$2} END {print s+0}'; }

declare -a CURL_S MD5_S COPY_S COPY_RSS
for round in $(seq "$ROUNDS"); do
  t=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$ORIGIN_PORT/big.bin")
  CURL_S+=("$t"); log "round $round: curl -o /dev/null ${t}s"
  # The file is in the page cache (nginx just sent it): this is MD5's speed on one core.
  start_ns=$(date +%s%N); md5sum "$WORK/www/big.bin" >/dev/null; end_ns=$(date +%s%N)
  t=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
  MD5_S+=("$t"); log "round $round: md5sum ${t}s"

  start_originpull
  sleep 0.5
  before=$(rss_kib "$OP_PID"); peak=$before
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$OP_PORT/big.bin")
  [ "$code" = 302 ] || die "expected 302, got $code"
  for _ in $(seq 1200); do
    r=$(rss_kib "$OP_PID"); [ "$r" -gt "$peak" ] && peak=$r
    [ "$(metric 'originpull_fills_total{bucket="bench-1250000000",outcome="stored"}')" = 1 ] && break
    sleep 0.05
  done
  [ "$(metric 'originpull_fills_total{bucket="bench-1250000000",outcome="stored"}')" = 1 ] || die "copy did not finish"
  d=$(metric 'originpull_fill_duration_seconds_sum')
  COPY_S+=("$d"); COPY_RSS+=("$(( (peak - before) / 1024 ))")
  log "round $round: originpull copy ${d}s, RSS +$(( (peak - before) / 1024 )) MiB"
  if [ "$round" != "$ROUNDS" ]; then stop_originpull; fi
done

# Serve the stored object to CLIENTS at once.
before=$(rss_kib "$OP_PID"); peak=$before
pids=()
for _ in $(seq "$CLIENTS"); do
  curl -s -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$OP_PORT/big.bin" & pids+=($!)
done
while kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[-1]}" 2>/dev/null; do
  r=$(rss_kib "$OP_PID"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.05
done
wait "${pids[@]}"
SERVE_RSS=$(( (peak - before) / 1024 ))
stop_originpull

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
curl_m=$(median "${CURL_S[@]}"); md5_m=$(median "${MD5_S[@]}")
copy_m=$(median "${COPY_S[@]}"); rss_m=$(median "${COPY_RSS[@]}")
echo "## 1 GiB copy and memory ($(nproc) cores, $(uname -r), ${SIZE_MIB} MiB, ${ROUNDS} rounds)"
echo
echo "| metric | value | target |"
echo "|---|---|---|"
echo "| md5sum of the file from the page cache (median s) | $md5_m | |"
echo "| curl -o /dev/null from the origin (median s) | $curl_m | |"
echo "| originpull copy into the bucket (median s) | $copy_m | |"
echo "| copy time / md5sum time | $(awk -v m="$md5_m" -v o="$copy_m" 'BEGIN {printf "%.2f", o / m}') | <= 1.20 |"
echo "| copy speed / curl speed | $(awk -v c="$curl_m" -v o="$copy_m" 'BEGIN {printf "%.2f", c / o}') | |"
echo "| RSS added by the copy (median MiB) | $rss_m | < 64 |"
echo "| RSS added serving it to $CLIENTS clients at once (MiB) | $SERVE_RSS | < 64 |"
echo
echo "raw: md5sum ${MD5_S[*]}; curl ${CURL_S[*]}; copy ${COPY_S[*]}; copy RSS MiB ${COPY_RSS[*]}"
