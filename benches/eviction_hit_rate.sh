#!/usr/bin/env bash
# Hit rate of originpull's disk-store eviction (README, "A bucket cache that fits its disk")
# against an exact LRU replayed offline and against nginx proxy_cache with the same max_size,
# all on one trace: Zipf(s=0.9) over N objects of 1-4 KiB (popularity shuffled against the key
# names), R requests, a fixed seed.
#
# A loopback nginx serves the N objects as files (the origin). originpull (one bucket,
# retention: cache, mode: mirror, store.max_bytes = CACHE_BYTES, memory tier off so every hit
# is a disk-store hit) and then nginx proxy_cache (max_size = CACHE_BYTES, proxy_cache_lock),
# each starting from an empty cache, get the trace replayed in order over CLIENTS keep-alive
# connections (benches/eviction_hit_rate.py). originpull's hits and misses are read from its
# metrics (result="hit" and result="mirror"), nginx's from X-Cache ($upstream_cache_status).
#
# Reading the numbers: both servers evict in the background, so each cache runs over
# CACHE_BYTES by what it has not evicted yet; the report gives each one's size sampled during
# the replay (a cache kept larger hits more). nginx holds max_size against file system blocks of
# its cache files (headers included), originpull against file bytes (body and trailer).
# result="mirror" counts both the request that fetches a missing object and those that waited
# for that fetch (served from the bucket once stored); the LRU and proxy_cache_lock count the
# latter as hits, hence the row "no origin GET of its own" (copies = origin GETs).
#
# Usage: benches/eviction_hit_rate.sh
# Environment knobs:
#   N=100000 R=1000000   objects and requests
#   CACHE_PERCENT=10     CACHE_BYTES = this % of the N objects' total bytes
#   CLIENTS=8            keep-alive connections of the replay
#   SEED=1               the trace's seed
#   WORK=                an empty (or new) directory to work in, kept afterwards
#                        (default: a temp dir, removed at exit unless KEEP_WORK=1)
#   ORIGINPULL_BIN=target/release/originpull   a built binary (this script does not build)
#   NGINX=/usr/sbin/nginx
# Output (stdout): the parameters and a markdown table; progress goes to stderr.
set -euo pipefail

N=${N:-100000}
R=${R:-1000000}
CACHE_PERCENT=${CACHE_PERCENT:-10}
CLIENTS=${CLIENTS:-8}
SEED=${SEED:-1}
KEEP_WORK=${KEEP_WORK:-0}
NGINX=${NGINX:-/usr/sbin/nginx}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
ORIGINPULL_BIN=${ORIGINPULL_BIN:-$REPO_ROOT/target/release/originpull}
PY="$REPO_ROOT/benches/eviction_hit_rate.py"
BUCKET=hr-1250000000
DOMAIN_SUFFIX=bench.local
HOST_HDR="$BUCKET.$DOMAIN_SUFFIX"

BENCH=eviction_hit_rate
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"  # log, die, free_port

for knob in N R CACHE_PERCENT CLIENTS SEED; do
  [[ ${!knob} =~ ^[0-9]+$ ]] && [ "${!knob}" -ge 1 ] || die "$knob must be a positive integer, got '${!knob}'"
done
[ -x "$ORIGINPULL_BIN" ] || die "no originpull binary at $ORIGINPULL_BIN (build it, or set ORIGINPULL_BIN)"
[ -x "$NGINX" ] || die "no nginx at $NGINX (set NGINX)"

# ---------------------------------------------------------------- work dir + cleanup
if [ -n "${WORK:-}" ]; then
  mkdir -p "$WORK"
  [ -z "$(ls -A "$WORK")" ] || die "WORK=$WORK is not empty (each cache must start empty)"
  WORK=$(cd "$WORK" && pwd); KEEP_WORK=1
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/originpull-hitrate.XXXXXX")
fi
chmod 755 "$WORK"  # nginx workers run as another user when not root
declare -A PID=()

stop() {  # stop NAME: SIGTERM, up to 5 s to exit, then SIGKILL
  local pid=${PID[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$1 (pid $pid) did not stop on TERM within 5 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "PID[$1]"
}
cleanup() {
  local rc=$? name
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do stop "$name"; done
  if [ "$KEEP_WORK" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_http NAME URL: until anything answers HTTP there (30 s)
wait_http() {
  for _ in $(seq 300); do
    kill -0 "${PID[$1]}" 2>/dev/null || die "$1 exited during startup (logs in $WORK/$1)"
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$2" || true)" != 000 ] && return 0
    sleep 0.1
  done
  die "$1 did not answer on $2 within 30 s"
}

# nginx_up NAME PORT SERVER_LINES [HTTP_LINES]: nginx of 2 workers, not daemonized, started
# from this shell (as benches/side_by_side.sh runs it), everything in $WORK/NAME.
nginx_up() {
  local dir="$WORK/$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
$([ "$(id -u)" = 0 ] && echo "user root;")
worker_processes 2;
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
    client_body_temp_path $dir/tmp-body; proxy_temp_path $dir/tmp-proxy;
    fastcgi_temp_path $dir/tmp-fcgi; uwsgi_temp_path $dir/tmp-uwsgi; scgi_temp_path $dir/tmp-scgi;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_requests 10000000;
    ${4:-}
    server {
        listen 127.0.0.1:$2;
$3
    }
}
EOF
  "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -t >"$dir/nginx-t.log" 2>&1 \
    || { cat "$dir/nginx-t.log" >&2; die "nginx -t rejected $dir/nginx.conf"; }
  "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$dir/out" 2>&1 &
  PID[$1]=$!
  wait_http "$1" "http://127.0.0.1:$2/"
}

# replay NAME PORT: the whole trace against 127.0.0.1:PORT -> $WORK/NAME-replay.json
replay() {
  log "replaying $R requests against $1 ($CLIENTS connections)"
  # In the background: a wait is cut short by a signal, so the trap stops a long replay at once.
  python3 "$PY" replay "$WORK" "$2" "$HOST_HDR" "$CLIENTS" >"$WORK/$1-replay.json" &
  PID[replay]=$!
  wait "${PID[replay]}" || die "the replay against $1 failed"
  unset 'PID[replay]'
}
disk_use() {  # disk_use DIR: its files, their bytes and the bytes allocated to them
  find "$1" -type f -printf '%s %b\n' | awk '{ n++; s += $1; b += $2 * 512 } END { printf "%d files, %d bytes, %d bytes allocated", n, s, b }'
}
# sample NAME SECONDS COMMAND...: in the background, COMMAND's output (a byte count) every
# SECONDS into $WORK/NAME-samples.txt: how far past CACHE_BYTES the cache grows while evicting
# behind. (nginx's is a walk of its cache directory: every 2 s, so it takes little of the CPU.)
sample() {
  local name=$1 every=$2; shift 2
  : >"$WORK/$name-samples.txt"
  ( while :; do "$@" >>"$WORK/$name-samples.txt" 2>/dev/null || true; sleep "$every"; done ) &
  PID[$name-sampler]=$!
}
store_bytes() { curl -s --max-time 1 "$METRICS_URL" | awk '$1 == "originpull_store_bytes" { print $2 }'; }
cache_file_bytes() { find "$WORK/nginx/cache" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# ---------------------------------------------------------------- objects, trace, offline LRU
log "writing $N objects and the trace of $R requests (seed $SEED) in $WORK"
TOTAL_BYTES=$(python3 "$PY" setup "$WORK" "$N" "$R" "$SEED")
CACHE_BYTES=$((TOTAL_BYTES * CACHE_PERCENT / 100))
log "objects: $TOTAL_BYTES bytes; CACHE_BYTES=$CACHE_BYTES"
log "offline LRU replay"
python3 "$PY" lru "$WORK" "$CACHE_BYTES" >"$WORK/lru.json"

ORIGIN_PORT=$(free_port)
log "starting the origin (nginx) on 127.0.0.1:$ORIGIN_PORT"
nginx_up origin "$ORIGIN_PORT" "        root $WORK/origin;"

# ---------------------------------------------------------------- originpull
OP_PORT=$(free_port); METRICS_PORT=$(free_port)
D="$WORK/originpull"
mkdir -p "$D/data"
cat >"$D/originpull.yaml" <<EOF
listen: 127.0.0.1:$OP_PORT
metrics_listen: 127.0.0.1:$METRICS_PORT
data_dir: $D/data
domain_suffix: $DOMAIN_SUFFIX
access_log: "off"
server: {threads: 2, grace_period_secs: 0, graceful_shutdown_timeout_secs: 1, pid_file: $D/originpull.pid, upgrade_sock: $D/upgrade.sock}
store: {max_bytes: $CACHE_BYTES}
memory_cache: {max_bytes: 0}
buckets:
  - name: $BUCKET
    retention: cache
    origin_pull: {enabled: true, mode: mirror, origin: "127.0.0.1:$ORIGIN_PORT"}
EOF
"$ORIGINPULL_BIN" -t -c "$D/originpull.yaml" >&2 || die "originpull -t rejected $D/originpull.yaml"
log "starting originpull on 127.0.0.1:$OP_PORT (metrics on $METRICS_PORT)"
"$ORIGINPULL_BIN" -c "$D/originpull.yaml" >"$D/stdout" 2>"$D/stderr" &
PID[originpull]=$!
wait_http originpull "http://127.0.0.1:$METRICS_PORT/metrics"
wait_http originpull "http://127.0.0.1:$OP_PORT/"  # no Host: counted under bucket="", not ours
METRICS_URL="http://127.0.0.1:$METRICS_PORT/metrics"
curl -sf --max-time 5 "$METRICS_URL" >"$WORK/originpull-metrics-before.txt"
sample originpull 0.5 store_bytes
replay originpull "$OP_PORT"
stop originpull-sampler
curl -sf --max-time 5 "$METRICS_URL" >"$WORK/originpull-metrics-after.txt"
sleep 2  # eviction runs in the background, looking at least every second
curl -sf --max-time 5 "$METRICS_URL" >"$WORK/originpull-metrics-end.txt"
OP_DISK=$(disk_use "$D/data")
stop originpull

# ---------------------------------------------------------------- nginx proxy_cache
NGINX_PORT=$(free_port)
log "starting nginx proxy_cache on 127.0.0.1:$NGINX_PORT"
nginx_up nginx "$NGINX_PORT" "        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_cache hr;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            add_header X-Cache \$upstream_cache_status;
        }" "proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=hr:64m max_size=$CACHE_BYTES inactive=7d use_temp_path=off;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }"
sample nginx 2 cache_file_bytes
replay nginx "$NGINX_PORT"
stop nginx-sampler
sleep 2  # nginx's cache manager also evicts in the background
NGINX_DISK=$(disk_use "$WORK/nginx/cache")
stop nginx
stop origin

# ---------------------------------------------------------------- report
MACHINE="$(nproc) CPU(s), $(uname -srm)"
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')
N=$N R=$R SEED=$SEED CLIENTS=$CLIENTS CACHE_PERCENT=$CACHE_PERCENT CACHE_BYTES=$CACHE_BYTES \
  TOTAL_BYTES=$TOTAL_BYTES MACHINE=$MACHINE NGINX_VERSION=$NGINX_VERSION OP_DISK=$OP_DISK \
  NGINX_DISK=$NGINX_DISK python3 "$PY" report "$WORK"
