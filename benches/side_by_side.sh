#!/usr/bin/env bash
# Side-by-side load benchmark: originpull vs nginx doing the same job.
#
# Both servers serve the same two objects from disk and answer a miss with
# "302 Location: http://<origin><path>":
#   hit4k     GET /obj4k               (4096 random bytes)      -> req/s, p99
#   hit1m     GET /obj1m               (1 MiB random bytes)     -> bytes/s, p99
#   hitjs_gzip GET /app.js, Accept-Encoding: gzip (100 KB of JavaScript, served
#             gzip-compressed: originpull's kept gzip variant, nginx's
#             gzip_static app.js.gz made with gzip -9; gzip on as fallback)
#                                                                -> req/s, p99
#   redirect  GET /missing/nothing.bin (never exists anywhere)  -> req/s, p99
#
# originpull gets its objects the way users get them in: a throw-away loopback
# origin (python3 -m http.server on 127.0.0.1) is the bucket's origin, each
# object is requested once (302 + background copy) and polled until
# originpull answers 200; then the origin is stopped, so its port is unused and
# the copies triggered by the redirect scenario fail fast (connection refused).
# nginx serves the same files from a root dir and 302s misses with try_files, tuned as an
# operator would for static files (sendfile, open_file_cache with errors cached).
# A bare Pingora responder (examples/bare_pingora: constant 4 KiB body, constant 302) shows
# the floor of our own stack, so the table separates our code from Pingora's. It sends the same
# header names and value lengths as originpull and uses the same allocator (mimalloc): the two
# put the same bytes on the wire through the same stack.
#
# Everything listens on 127.0.0.1 only. Servers, wrk and the benchmark share
# the machine's cores, so the numbers compare the two servers on this box;
# they are not absolute capacity figures.
#
# Usage:  benches/side_by_side.sh [--quick] [--help]
#   --quick            smoke run: ROUNDS=1 DURATION=3
# Environment knobs:
#   ROUNDS=3           rounds per scenario (runs alternate originpull, nginx)
#   DURATION=10        seconds per wrk run
#   THREADS=2          wrk threads
#   CONNECTIONS=64     wrk connections
#   WARMUP=1           seconds of unrecorded wrk warm-up per scenario and server (0: none)
#   LOGS=off|on        on: both servers write access logs to files in the work dir
#   KEEP_WORK=0        1: keep the temp work dir (configs, logs, wrk outputs)
#   ORIGINPULL_BIN=    path of a prebuilt originpull binary to use instead of
#                      building with `cargo build --release` (default: build)
#   ORIGINPULL_SKIP=0  1: DEBUGGING ONLY - do not build/run originpull, bench nginx alone
#   BARE=1             0: leave out the bare Pingora responder (examples/bare_pingora), the
#                      floor of our own stack, run for the 4 KiB hit and the 302
#   BARE_PINGORA_BIN=  path of a prebuilt examples/bare_pingora
#
# Output (stdout): machine, command line, per-round raw numbers and a markdown
# table of medians with ratio originpull/nginx. Progress goes to stderr.
#
# Notes: wrk (4.x) counts only status >= 400 as "Non-2xx or 3xx responses", so
# the 302s of the redirect scenario are not errors; any status error in any
# scenario is reported. Peak RSS is VmHWM from /proc/PID/status read at the end
# (nginx: master + workers summed, and the largest single process).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=1; DURATION=3 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "side_by_side.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-1}
LOGS=${LOGS:-off}
KEEP_WORK=${KEEP_WORK:-0}
ORIGINPULL_SKIP=${ORIGINPULL_SKIP:-0}
BARE=${BARE:-1}
ORIGINPULL_BIN=${ORIGINPULL_BIN:-}

# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
log() { printf '[side_by_side] %s\n' "$*" >&2; }
die() { printf '[side_by_side] ERROR: %s\n' "$*" >&2; exit 1; }

for knob in ROUNDS DURATION THREADS CONNECTIONS WARMUP; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || die "$knob must be a non-negative integer, got '${!knob}'"
done
if [ "$ROUNDS" -lt 1 ] || [ "$DURATION" -lt 1 ] || [ "$THREADS" -lt 1 ]; then
  die "ROUNDS, DURATION and THREADS must be >= 1"
fi
[ "$CONNECTIONS" -ge "$THREADS" ] || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS)"
case "$LOGS" in on|off) ;; *) die "LOGS must be 'on' or 'off', got '$LOGS'" ;; esac

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
REPORT_PY="$SCRIPT_DIR/side_by_side_report.py"
[ -f "$REPORT_PY" ] || die "missing helper $REPORT_PY"

BUCKET=bench-1250000000
DOMAIN_SUFFIX=bench.local
HOST_HDR="$BUCKET.$DOMAIN_SUFFIX"
MISS_PATH=/missing/nothing.bin

# ---------------------------------------------------------------- tools
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
fi
APT_UPDATED=0
apt_install() {
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "need to install $* but not root and no sudo"
  fi
  log "installing $* from Debian"
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2; then
    [ "$APT_UPDATED" -eq 0 ] || die "apt-get install $* failed"
    "${SUDO[@]}" apt-get update >&2
    APT_UPDATED=1
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2 || die "apt-get install $* failed"
  fi
}
# nginx lives in /usr/sbin, which is not on a normal user's PATH.
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
NGINX_BIN=$(find_nginx)
if [ -z "$NGINX_BIN" ]; then apt_install nginx; NGINX_BIN=$(find_nginx); fi
[ -n "$NGINX_BIN" ] || die "nginx not found after install"
command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v curl >/dev/null 2>&1 || apt_install curl
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v md5sum >/dev/null 2>&1 || apt_install coreutils

OP_BIN=""
if [ "$ORIGINPULL_SKIP" = 1 ]; then
  log "ORIGINPULL_SKIP=1: debugging mode, originpull is neither built nor benchmarked"
elif [ -n "$ORIGINPULL_BIN" ]; then
  OP_BIN=$(cd "$(dirname "$ORIGINPULL_BIN")" && pwd)/$(basename "$ORIGINPULL_BIN")
  [ -x "$OP_BIN" ] || die "ORIGINPULL_BIN=$ORIGINPULL_BIN is not an executable file"
  log "using prebuilt originpull $OP_BIN (ORIGINPULL_BIN; not building)"
else
  log "building originpull (cargo build --release) in $REPO_ROOT"
  (cd "$REPO_ROOT" && cargo build --release >&2) || die "cargo build --release failed"
  TARGET_DIR=$(cd "$REPO_ROOT" && mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
  OP_BIN="$TARGET_DIR/release/originpull"
  [ -x "$OP_BIN" ] || die "originpull binary not found at $OP_BIN"
fi

# ---------------------------------------------------------------- work dir + cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/originpull-bench.XXXXXX")
chmod 755 "$WORK"  # nginx workers (non-root user) must traverse it
OP_PID=""
NGINX_PID=""
ORIGIN_PID=""
BARE_PIDS=()

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 5 s, then KILL
  local pid=$1 name=$2
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop on TERM within 5 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$ORIGIN_PID" "python origin"
  stop_pid "$OP_PID" originpull
  for pid in "${BARE_PIDS[@]}"; do stop_pid "$pid" "bare pingora"; done
  if [ -n "$NGINX_PID" ]; then
    "$NGINX_BIN" -p "$WORK/" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" -s stop 2>/dev/null || true
    stop_pid "$NGINX_PID" nginx
  fi
  if [ "$KEEP_WORK" = 1 ]; then
    log "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
# Three distinct free loopback ports, held open together so they differ.
read -r PORT_A PORT_B ORIGIN_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
)
[ -n "$ORIGIN_PORT" ] || die "could not pick free ports"
OP_URL="http://127.0.0.1:$PORT_A"
NGINX_URL="http://127.0.0.1:$PORT_B"
EXPECTED_LOCATION="http://127.0.0.1:$ORIGIN_PORT$MISS_PATH"

# http_code URL [extra curl args...]: prints the status code (000 if no answer)
http_code() {
  local url=$1; shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $HOST_HDR" "$@" "$url" || true
}

# wait_listening URL PID NAME LOGFILE: until anything answers HTTP on URL (30 s)
wait_listening() {
  local url=$1 pid=$2 name=$3 logf=$4
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logf" >&2 || true; die "$name exited during startup (log above: $logf)"; }
    [ "$(http_code "$url/")" != 000 ] && return 0
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$name did not answer on $url within 30 s"
}

# location_of URL: the raw Location header (empty if none)
location_of() {
  curl -s -o /dev/null -D - --max-time 5 -H "Host: $HOST_HDR" "$1" \
    | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }' || true
}

md5_of_url() { curl -s --max-time 10 -H "Host: $HOST_HDR" "$1" | md5sum | cut -d' ' -f1; }

vmhwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

children_of() {  # direct children of PID, from /proc
  local p
  for p in /proc/[0-9]*; do
    [ "$(awk '/^PPid:/ { print $2 }' "$p/status" 2>/dev/null || true)" = "$1" ] && echo "${p#/proc/}"
  done
  return 0
}

# ---------------------------------------------------------------- objects
WWW="$WORK/www"
mkdir -p "$WWW" "$WORK/data" "$WORK/wrk"
head -c 4096 /dev/urandom >"$WWW/obj4k"
head -c 1048576 /dev/urandom >"$WWW/obj1m"
# 100 KB of JavaScript-like text, and nginx's precompressed copy of it.
python3 -c '
import sys
sys.stdout.write("".join("function f%d(a, b) { return a * %d + b; } // %x\n" % (i, i, i * 2654435761 % 4294967296) for i in range(1800)))
' | head -c 102400 >"$WWW/app.js"
gzip -9 -k -n "$WWW/app.js"
chmod 755 "$WWW"
chmod 644 "$WWW/obj4k" "$WWW/obj1m" "$WWW/app.js" "$WWW/app.js.gz"
MD5_4K=$(md5sum <"$WWW/obj4k" | cut -d' ' -f1)
MD5_1M=$(md5sum <"$WWW/obj1m" | cut -d' ' -f1)
MD5_JS=$(md5sum <"$WWW/app.js" | cut -d' ' -f1)

# ---------------------------------------------------------------- originpull
if [ "$ORIGINPULL_SKIP" != 1 ]; then
  if [ "$LOGS" = on ]; then OP_ACCESS_LOG="$WORK/originpull-access.log"; else OP_ACCESS_LOG=off; fi
  cat >"$WORK/originpull.yaml" <<EOF
listen: 127.0.0.1:$PORT_A
data_dir: $WORK/data
domain_suffix: $DOMAIN_SUFFIX
access_log: $OP_ACCESS_LOG
server:
  threads: 2
buckets:
  - name: $BUCKET
    origin_pull:
      enabled: true
      origin: 127.0.0.1:$ORIGIN_PORT
EOF

  log "starting loopback origin (python3 http.server) on 127.0.0.1:$ORIGIN_PORT"
  python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$WWW" >"$WORK/origin.log" 2>&1 &
  ORIGIN_PID=$!
  wait_listening "http://127.0.0.1:$ORIGIN_PORT" "$ORIGIN_PID" "python origin" "$WORK/origin.log"

  log "starting originpull on $OP_URL"
  RUST_LOG=${RUST_LOG:-warn} "$OP_BIN" -c "$WORK/originpull.yaml" >"$WORK/originpull.log" 2>&1 &
  OP_PID=$!
  wait_listening "$OP_URL" "$OP_PID" originpull "$WORK/originpull.log"

  for obj in obj4k obj1m app.js; do
    code=$(http_code "$OP_URL/$obj")
    log "originpull first GET /$obj -> $code (expect 302 + background copy)"
    [ "$code" = 302 ] || [ "$code" = 200 ] || die "originpull answered $code to the first GET /$obj (expected 302)"
    ok=0
    for _ in $(seq 300); do
      if [ "$(http_code "$OP_URL/$obj")" = 200 ]; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" = 1 ] || { tail -n 30 "$WORK/originpull.log" >&2 || true; die "originpull did not serve /$obj with 200 within 30 s after the origin pull"; }
  done
  # The gzip variant is made in the background after the first request that asks for it.
  ok=0
  for _ in $(seq 300); do
    if curl -s -o /dev/null -D - --max-time 5 -H "Host: $HOST_HDR" -H 'Accept-Encoding: gzip' "$OP_URL/app.js" \
        | tr -d '\r' | grep -qi '^content-encoding: gzip$'; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || die "originpull never served /app.js gzip-compressed"
  log "objects are in the bucket; stopping the loopback origin (its port becomes the dead origin)"
  stop_pid "$ORIGIN_PID" "python origin"
  ORIGIN_PID=""
fi

# ---------------------------------------------------------------- nginx
if [ "$LOGS" = on ]; then NGINX_ACCESS_LOG="$WORK/nginx-access.log"; else NGINX_ACCESS_LOG=off; fi
NGINX_USER_LINE=""
[ "$(id -u)" -eq 0 ] && NGINX_USER_LINE="user root;"
for d in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$WORK/nginx-temp/$d"; done
cat >"$WORK/nginx.conf" <<EOF
$NGINX_USER_LINE
worker_processes 2;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;

events {
    worker_connections 4096;
}

http {
    access_log $NGINX_ACCESS_LOG;
    default_type application/octet-stream;
    types { application/javascript js; }
    gzip on;
    gzip_static on;
    gzip_types application/javascript;
    gzip_comp_level 9;
    gzip_vary on;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    # As an operator tunes nginx for static files: descriptors and stat results are cached,
    # misses included, so a hit or a 302 costs no open()/stat() (issue #13).
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_errors on;
    client_body_temp_path $WORK/nginx-temp/client_body;
    proxy_temp_path $WORK/nginx-temp/proxy;
    fastcgi_temp_path $WORK/nginx-temp/fastcgi;
    uwsgi_temp_path $WORK/nginx-temp/uwsgi;
    scgi_temp_path $WORK/nginx-temp/scgi;

    server {
        listen 127.0.0.1:$PORT_B;
        server_name $HOST_HDR;

        location / {
            root $WWW;
            try_files \$uri @origin;
        }
        location @origin {
            return 302 http://127.0.0.1:$ORIGIN_PORT\$request_uri;
        }
    }
}
EOF
NGINX_ARGS=(-p "$WORK/" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log")
"$NGINX_BIN" "${NGINX_ARGS[@]}" -t >"$WORK/nginx-t.log" 2>&1 || { cat "$WORK/nginx-t.log" >&2; die "nginx -t rejected $WORK/nginx.conf"; }
log "starting nginx on $NGINX_URL"
"$NGINX_BIN" "${NGINX_ARGS[@]}" -g 'daemon off;' >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
wait_listening "$NGINX_URL" "$NGINX_PID" nginx "$WORK/nginx-error.log"

# ---------------------------------------------------------------- bare Pingora
# The floor of our own stack: examples/bare_pingora answering a constant 4 KiB body and a
# constant 302 (two processes), same thread count, same response bytes and allocator, no
# originpull code at all.
if [ "$BARE" = 1 ]; then
  if [ -n "${BARE_PINGORA_BIN:-}" ]; then BARE_BIN=$BARE_PINGORA_BIN; else
    (cd "$REPO_ROOT" && cargo build --release --example bare_pingora -q) || die "cannot build examples/bare_pingora"
    BARE_BIN="$REPO_ROOT/target/release/examples/bare_pingora"
  fi
  PORT_BARE_4K=$(free_port); PORT_BARE_302=$(free_port)
  BARE_4K_URL="http://127.0.0.1:$PORT_BARE_4K"; BARE_302_URL="http://127.0.0.1:$PORT_BARE_302"
  "$BARE_BIN" 4k "127.0.0.1:$PORT_BARE_4K" 2 >"$WORK/bare-4k.log" 2>&1 & BARE_PIDS+=($!)
  "$BARE_BIN" 302 "127.0.0.1:$PORT_BARE_302" 2 >"$WORK/bare-302.log" 2>&1 & BARE_PIDS+=($!)
  wait_listening "$BARE_4K_URL" "${BARE_PIDS[0]}" bare-4k "$WORK/bare-4k.log"
  wait_listening "$BARE_302_URL" "${BARE_PIDS[1]}" bare-302 "$WORK/bare-302.log"
fi

# ---------------------------------------------------------------- sanity checks
SERVERS=()
[ "$ORIGINPULL_SKIP" != 1 ] && SERVERS+=(originpull)
SERVERS+=(nginx)
[ "$BARE" = 1 ] && SERVERS+=(pingora)
# url_of SERVER [SCENARIO]: the bare responder has one process per scenario it can answer.
url_of() {
  case "$1" in
    originpull) echo "$OP_URL" ;;
    nginx) echo "$NGINX_URL" ;;
    pingora) if [ "${2:-}" = redirect ]; then echo "$BARE_302_URL"; else echo "$BARE_4K_URL"; fi ;;
  esac
}
# The bare responder only has a 4 KiB body and a 302.
serves() { [ "$1" != pingora ] || [ "$2" = hit4k ] || [ "$2" = redirect ]; }

log "sanity checks"
for s in "${SERVERS[@]}"; do
  if [ "$s" = pingora ]; then
    res=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 10 "$BARE_4K_URL/obj4k" || true)
    [ "$res" = "200 4096" ] || die "bare pingora: GET /obj4k gave '$res', expected '200 4096'"
    [ "$(http_code "$BARE_302_URL$MISS_PATH")" = 302 ] || die "bare pingora: no 302"
    continue
  fi
  u=$(url_of "$s")
  for spec in "obj4k 4096 $MD5_4K" "obj1m 1048576 $MD5_1M"; do
    read -r obj size md5 <<<"$spec"
    res=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 10 -H "Host: $HOST_HDR" "$u/$obj" || true)
    [ "$res" = "200 $size" ] || die "$s: GET /$obj gave '$res', expected '200 $size'"
    got=$(md5_of_url "$u/$obj")
    [ "$got" = "$md5" ] || die "$s: GET /$obj md5 $got differs from the source file's $md5"
  done
  res=$(curl -s -o "$WORK/app.js.$s.gz" -w '%{http_code}' -D "$WORK/app.js.$s.head" --max-time 10 \
    -H "Host: $HOST_HDR" -H 'Accept-Encoding: gzip' "$u/app.js" || true)
  [ "$res" = 200 ] || die "$s: GET /app.js (gzip) gave '$res', expected 200"
  tr -d '\r' <"$WORK/app.js.$s.head" | grep -qi '^content-encoding: gzip$' || die "$s: GET /app.js was not gzip-compressed"
  got=$(gunzip -c "$WORK/app.js.$s.gz" | md5sum | cut -d' ' -f1)
  [ "$got" = "$MD5_JS" ] || die "$s: GET /app.js gunzipped md5 $got differs from the source file's $MD5_JS"
  code=$(http_code "$u$MISS_PATH")
  [ "$code" = 302 ] || die "$s: GET $MISS_PATH gave $code, expected 302"
  loc=$(location_of "$u$MISS_PATH")
  [ "$loc" = "$EXPECTED_LOCATION" ] || die "$s: GET $MISS_PATH Location '$loc', expected '$EXPECTED_LOCATION'"
  log "  $s: /obj4k and /obj1m 200 with the right bytes, /app.js gzip ($(wc -c <"$WORK/app.js.$s.gz") bytes) gunzips to the source, $MISS_PATH 302 -> $loc"
done
# (Both servers compared against the same source md5s and the same Location,
# so they agree with each other.)

# ---------------------------------------------------------------- wrk
LUA="$WORK/report.lua"
cat >"$LUA" <<'EOF'
-- Generated by benches/side_by_side.sh: exact numbers from wrk's summary.
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT rps=%.3f bps=%.3f p50_us=%.0f p99_us=%.0f requests=%.0f bytes=%.0f duration_us=%.0f " ..
    "err_connect=%.0f err_read=%.0f err_write=%.0f err_status=%.0f err_timeout=%.0f\n",
    summary.requests / secs, summary.bytes / secs,
    latency:percentile(50), latency:percentile(99),
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

path_of() { case "$1" in hit4k) echo /obj4k ;; hit1m) echo /obj1m ;; hitjs_gzip) echo /app.js ;; redirect) echo "$MISS_PATH" ;; *) die "unknown scenario $1" ;; esac; }

# run_wrk SERVER SCENARIO SECONDS OUTFILE
run_wrk() {
  local url extra=()
  url="$(url_of "$1" "$2")$(path_of "$2")"
  [ "$2" = hitjs_gzip ] && extra=(-H 'Accept-Encoding: gzip')
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "${3}s" --timeout 5s --latency \
    -H "Host: $HOST_HDR" "${extra[@]}" -s "$LUA" "$url" >"$4" 2>&1 || { cat "$4" >&2; die "wrk failed against $1 ($url)"; }
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
SCENARIOS=(hit4k hit1m hitjs_gzip redirect)
for sc in "${SCENARIOS[@]}"; do
  if [ "$WARMUP" -gt 0 ]; then
    for s in "${SERVERS[@]}"; do
      serves "$s" "$sc" || continue
      log "warm-up $sc $s (${WARMUP}s)"
      run_wrk "$s" "$sc" "$WARMUP" "$WORK/wrk/warmup-$sc-$s.txt"
    done
  fi
  for r in $(seq "$ROUNDS"); do
    for s in "${SERVERS[@]}"; do
      serves "$s" "$sc" || continue
      out="$WORK/wrk/$sc-$r-$s.txt"
      log "round $r/$ROUNDS $sc $s (${DURATION}s, $THREADS threads, $CONNECTIONS connections)"
      run_wrk "$s" "$sc" "$DURATION" "$out"
      row=$(python3 "$REPORT_PY" parse "$out")
      printf '%s\t%s\t%s\t%s\n' "$sc" "$r" "$s" "$row" >>"$RESULTS"
      read -r rps bps p99 _ _ _ sockerr staterr _ <<<"$row"
      log "  -> $(awk -v a="$rps" -v b="$bps" -v c="$p99" 'BEGIN { printf "%.1f req/s, %.1f MiB/s, p99 %.3f ms", a, b / 1048576, c / 1000 }'), socket errors $sockerr, status errors $staterr"
      if [ "$sockerr" != 0 ] || [ "$staterr" != 0 ]; then
        log "  WARNING: errors in this run; wrk output: $out"
        grep -E 'Socket errors|Non-2xx' "$out" >&2 || true
      fi
      sleep 1
    done
  done
done

# ---------------------------------------------------------------- peak RSS
RSS="$WORK/rss.tsv"
: >"$RSS"
if [ "$ORIGINPULL_SKIP" != 1 ]; then
  kill -0 "$OP_PID" 2>/dev/null || die "originpull died during the benchmark (log: $WORK/originpull.log)"
  hwm=$(vmhwm_kib "$OP_PID")
  printf 'originpull\t%s\t%s\t1\n' "${hwm:-0}" "${hwm:-0}" >>"$RSS"
fi
kill -0 "$NGINX_PID" 2>/dev/null || die "nginx died during the benchmark (log: $WORK/nginx-error.log)"
total=0; maxone=0; n=0
mapfile -t NGINX_WORKERS < <(children_of "$NGINX_PID")
for p in "$NGINX_PID" "${NGINX_WORKERS[@]}"; do
  hwm=$(vmhwm_kib "$p")
  [ -n "$hwm" ] || continue
  total=$((total + hwm)); n=$((n + 1))
  [ "$hwm" -gt "$maxone" ] && maxone=$hwm
done
printf 'nginx\t%s\t%s\t%s\n' "$total" "$maxone" "$n" >>"$RSS"

# ---------------------------------------------------------------- report
CMDLINE=$(printf '%q ' "$0" "${ORIG_ARGS[@]}")
{
  echo "## originpull vs nginx, side by side"
  echo
  echo "- machine: $(nproc) CPU(s), $(uname -srm), $(awk '/^model name/ { sub(/^[^:]*: /, ""); print; exit }' /proc/cpuinfo 2>/dev/null || true)"
  echo "- command: \`ROUNDS=$ROUNDS DURATION=$DURATION THREADS=$THREADS CONNECTIONS=$CONNECTIONS WARMUP=$WARMUP LOGS=$LOGS ORIGINPULL_SKIP=$ORIGINPULL_SKIP${ORIGINPULL_BIN:+ ORIGINPULL_BIN=$ORIGINPULL_BIN} ${CMDLINE% }\`"
  echo "- wrk: \`wrk -t $THREADS -c $CONNECTIONS -d ${DURATION}s --timeout 5s --latency -H 'Host: $HOST_HDR' -s report.lua URL\` ($(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }'))"
  echo "- nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 2, sendfile, open_file_cache (errors cached); originpull: server.threads 2; bare Pingora (examples/bare_pingora): 2 threads; access logs: $LOGS"
  if [ "$ORIGINPULL_SKIP" = 1 ]; then
    echo "- **ORIGINPULL_SKIP=1: debugging run, originpull was not benchmarked**"
  fi
  echo
  python3 "$REPORT_PY" report "$RESULTS" "$RSS"
}
