#!/usr/bin/env bash
# Side-by-side load benchmark: originpull against nginx (and Varnish for mirror misses) doing
# what users do, in one interleaved run: each round runs every server in turn on the same
# scenario (issue #23).
#
# Scenarios (SCENARIOS picks a subset; wrk -t THREADS -c CONNECTIONS unless said):
#   hit4k              GET /obj4k: one 4 KiB object, again and again
#   hit4k_many         4 KiB hits over OBJECTS stored objects, a random key per request
#                      (benches/wrk/random_keys.lua); originpull's memory tier at its default
#   hit4k_disk         4 KiB hits over DISK_OBJECTS objects from a second originpull whose memory
#                      tier is off (memory_cache.max_bytes: 0): disk hits
#   hit1m              GET /obj1m: 1 MiB                                   -> MiB/s
#   hitjs_gzip         GET /app.js (100 KB of JavaScript), Accept-Encoding: gzip: originpull's
#                      kept gzip variant against nginx's gzip_static app.js.gz (gzip -9)
#   hitjs_br           the same with Accept-Encoding: gzip, br: originpull's br variant against
#                      nginx's brotli_static app.js.br (brotli -q 11); needs nginx's brotli
#                      module (Debian libnginx-mod-http-brotli-static), else nginx is n/a
#   redirect           GET /missing/nothing.bin: the same missing key on every request -> 302
#   redirect_distinct  a different missing key on every request (benches/wrk/distinct_misses.lua)
#                      -> 302; the origin is down in both 302 scenarios
#   s3_hit4k           GET /obj4k from a third originpull whose store is S3 (moto, as in
#                      benches/s3_hits.sh; memory tier on), against the disk store's originpull
#                      in the same rounds: p99 beside p99
#   mirror             mode: mirror. Per round, each server starts with an empty cache: the cold
#                      set (MIRROR_KEYS distinct objects of MIRROR_SIZE bytes, each asked for
#                      once, MIRROR_CLIENTS clients; benches/side_by_side_load.py cold) -> time,
#                      then warm hits over the same keys (wrk -c MIRROR_CLIENTS) -> req/s.
#                      Against nginx proxy_cache + proxy_cache_lock and Varnish (malloc,256m),
#                      all three pulling from the same loopback nginx origin
#   idle               IDLE_CONNECTIONS keep-alive connections left idle after one GET /obj4k:
#                      RSS added per connection (nginx: master and workers summed) and what is
#                      still held once they close
# Every wrk run also reports the CPU time (user + system, /proc/PID/stat, all threads) the
# server's processes used during it, divided by the requests: originpull's one process, all of
# nginx's (master and workers), Varnish's manager and child, the floor's process. On this kind
# of shared 2-core machine it is much steadier than req/s.
#
# How the objects get in: nginx serves them as files from its root (the same files). originpull
# gets them the way users do: a loopback nginx serving that root is each bucket's origin, and
# `originpull prefetch` (README, "The prefetch command") copies the key list through the admin
# API (copies fsynced, as always); the gzip and br variants are made in the background after
# the first request that asks for them, waited for here. Then that origin is stopped, so its port
# is closed: the 302 scenarios' copies fail fast (connection refused) and the Location of both
# servers points there. The mirror scenario starts an origin on another port for its own use.
#
# nginx is tuned as an operator would for static files: 2 workers, sendfile, tcp_nopush,
# open_file_cache sized for OBJECTS (max=OBJECTS+10000, errors cached, valid 60 s; capped, with
# a note in the report, where the open-files limit cannot be raised that far),
# worker_rlimit_nofile to match, gzip_static (gzip on as fallback), brotli_static when the
# module is there, try_files $uri @origin and return 302. originpull runs server.threads: 2,
# keeps as many files open as nginx's open_file_cache (memory_cache.open_files; with
# server.max_connections at nginx's worker_connections, so the same descriptor limit leaves it
# about as many), with its serving defaults otherwise, at its default log level (RUST_LOG is unset for it),
# stderr to a file whose growth is reported per run and in total: a check that nothing is
# logged per request.
#
# The floor: examples/bare_pingora (a constant 4 KiB body or a constant 302, with originpull's
# header names and value lengths, on mimalloc) has originpull's listening arrangement (one
# SO_REUSEPORT socket and one single-threaded Pingora runtime per worker, 2 workers) with
# Pingora's own accept loop and HTTP/1 session on each: not originpull's accept loop
# (edge::listener) and connection gate (edge::connection), and with Pingora's default
# per-connection socket buffers (64 KiB read, 16 KiB write) where originpull's gate buffers
# each request itself. It answers every path alike, so it stands in the 4 KiB-hit and 302 rows:
# the floor of our own stack, separating our code from Pingora's.
#
# Everything listens on 127.0.0.1. Servers, wrk and this script share the machine's cores, so
# the numbers compare the servers on this box; they are not capacity figures. Servers are all
# started in the foreground from this shell: a daemonized nginx (setsid) lands in a scheduler
# autogroup of its own and gets a fairer share of the cores than a server started from the
# shell that runs wrk.
#
# Usage:  benches/side_by_side.sh [--quick] [--help]
#   --quick            smoke run: ROUNDS=1 DURATION=3
# Environment knobs:
#   SCENARIOS=all      a subset, e.g. "hit4k redirect_distinct" (names above; spaces or commas)
#   ROUNDS=3           rounds per scenario (runs alternate originpull, nginx, the floor/Varnish)
#   DURATION=10        seconds per wrk run
#   THREADS=2          wrk threads
#   CONNECTIONS=64     wrk connections
#   WARMUP=1           seconds of unrecorded wrk warm-up per scenario and server (0: none)
#   LOGS=off|on        on: every server under test writes an access log to a file in the work
#                      dir (Varnish always keeps its shared-memory log, and nothing more)
#   OBJECTS=100000     objects of hit4k_many (4 KiB each; the files and the prefetch take time)
#   DISK_OBJECTS=10    objects of hit4k_disk
#   MIRROR_KEYS=200 MIRROR_SIZE=262144 MIRROR_CLIENTS=16   the mirror scenario's cold set
#   IDLE_CONNECTIONS=5000  connections of the idle scenario
#   KEEP_WORK=0        1: keep the temp work dir (configs, logs, wrk outputs)
#   ORIGINPULL_BIN=    path of a prebuilt originpull binary to use instead of
#                      building with `cargo build --release` (default: build)
#   ORIGINPULL_SKIP=0  1: DEBUGGING ONLY - do not build/run originpull, bench the others alone
#   BARE=1             0: leave out the bare Pingora floor (examples/bare_pingora)
#   BARE_PINGORA_BIN=  path of a prebuilt examples/bare_pingora (default: build it)
#   ORIGINPULL_MOTO_VENV=  moto's venv for s3_hit4k (default ~/.local/share/originpull/moto-venv,
#                      made by .ci/setup); without it s3_hit4k is reported n/a
#
# Output (stdout): machine, command line, per-round raw numbers and markdown tables of medians
# with the ratios originpull/nginx, originpull/floor and originpull/Varnish, and CPU µs per
# request for each. Progress goes to stderr.
#
# Notes: wrk (4.x) counts only status >= 400 as "Non-2xx or 3xx responses", so the 302s are not
# errors; any status error in any scenario is reported. Peak RSS is VmHWM from
# /proc/PID/status read after the load scenarios, before the idle one (nginx: master + workers
# summed, and the largest single process).
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
OBJECTS=${OBJECTS:-100000}
DISK_OBJECTS=${DISK_OBJECTS:-10}
MIRROR_KEYS=${MIRROR_KEYS:-200}
MIRROR_SIZE=${MIRROR_SIZE:-262144}
MIRROR_CLIENTS=${MIRROR_CLIENTS:-16}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
KEEP_WORK=${KEEP_WORK:-0}
ORIGINPULL_SKIP=${ORIGINPULL_SKIP:-0}
BARE=${BARE:-1}
ORIGINPULL_BIN=${ORIGINPULL_BIN:-}
SCENARIOS=${SCENARIOS:-all}
MOTO_VENV=${ORIGINPULL_MOTO_VENV:-$HOME/.local/share/originpull/moto-venv}

BENCH=side_by_side
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

for knob in ROUNDS DURATION THREADS CONNECTIONS WARMUP OBJECTS DISK_OBJECTS MIRROR_KEYS MIRROR_SIZE \
    MIRROR_CLIENTS IDLE_CONNECTIONS; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || die "$knob must be a non-negative integer, got '${!knob}'"
done
for knob in ROUNDS DURATION THREADS OBJECTS DISK_OBJECTS MIRROR_KEYS MIRROR_SIZE IDLE_CONNECTIONS; do
  [ "${!knob}" -ge 1 ] || die "$knob must be >= 1"
done
[ "$CONNECTIONS" -ge "$THREADS" ] || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS)"
[ "$MIRROR_CLIENTS" -ge "$THREADS" ] || die "MIRROR_CLIENTS ($MIRROR_CLIENTS) must be >= THREADS ($THREADS)"
case "$LOGS" in on|off) ;; *) die "LOGS must be 'on' or 'off', got '$LOGS'" ;; esac

ALL_SCENARIOS=(hit4k hit4k_many hit4k_disk hit1m hitjs_gzip hitjs_br redirect redirect_distinct s3_hit4k mirror idle)
if [ "$SCENARIOS" = all ]; then
  SELECTED=("${ALL_SCENARIOS[@]}")
else
  read -r -a SELECTED <<<"${SCENARIOS//,/ }"
  for sc in "${SELECTED[@]}"; do
    [[ " ${ALL_SCENARIOS[*]} " == *" $sc "* ]] || die "unknown scenario '$sc' in SCENARIOS (known: ${ALL_SCENARIOS[*]})"
  done
fi
[ ${#SELECTED[@]} -gt 0 ] || die "SCENARIOS selects nothing"
want() {  # want SCENARIO...: any of them selected
  local sc
  for sc in "$@"; do [[ " ${SELECTED[*]} " == *" $sc "* ]] && return 0; done
  return 1
}
drop() {  # drop SCENARIO: leave it out (NOTES says why)
  local keep=() sc
  for sc in "${SELECTED[@]}"; do [ "$sc" = "$1" ] || keep+=("$sc"); done
  SELECTED=("${keep[@]}")
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
REPORT_PY="$SCRIPT_DIR/side_by_side_report.py"
LOAD_PY="$SCRIPT_DIR/side_by_side_load.py"
WRK_LUA="$SCRIPT_DIR/wrk"
for f in "$REPORT_PY" "$LOAD_PY" "$WRK_LUA/summary.lua" "$WRK_LUA/random_keys.lua" "$WRK_LUA/distinct_misses.lua"; do
  [ -f "$f" ] || die "missing helper $f"
done

BUCKET=bench-1250000000
DOMAIN_SUFFIX=bench.local
HOST_HDR="$BUCKET.$DOMAIN_SUFFIX"
MISS_PATH=/missing/nothing.bin

# Descriptors: wrk, the idle connections, nginx's open_file_cache (one per cached file).
ulimit -n "$(ulimit -Hn)"

# ---------------------------------------------------------------- tools
NOTES=()  # scenarios or servers left out, and why: printed with the report
note() { NOTES+=("$*"); log "note: $*"; }
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
fi
APT_UPDATED=0
# try_apt_install PACKAGE...: installs from Debian; returns non-zero when that is not possible.
try_apt_install() {
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    log "cannot install $* (not root, no sudo)"; return 1
  fi
  log "installing $* from Debian"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 && return 0
  [ "$APT_UPDATED" -eq 0 ] || return 1
  "${SUDO[@]}" apt-get update >&2 || return 1
  APT_UPDATED=1
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}
apt_install() { try_apt_install "$@" || die "apt-get install $* failed"; }
# nginx lives in /usr/sbin, which is not on a normal user's PATH.
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
NGINX_BIN=$(find_nginx)
if [ -z "$NGINX_BIN" ]; then apt_install nginx; NGINX_BIN=$(find_nginx); fi
[ -n "$NGINX_BIN" ] || die "nginx not found after install"
command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v curl >/dev/null 2>&1 || apt_install curl
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v md5sum >/dev/null 2>&1 || apt_install coreutils

BROTLI_MODULE=/usr/lib/nginx/modules/ngx_http_brotli_static_module.so
HAVE_BROTLI_CLI=0
NGINX_BROTLI=0
if want hitjs_br; then
  command -v brotli >/dev/null 2>&1 || try_apt_install brotli || true
  if command -v brotli >/dev/null 2>&1; then HAVE_BROTLI_CLI=1; else
    note "hitjs_br: n/a, the brotli command (Debian brotli) is missing and could not be installed: nothing makes app.js.br or checks a br answer"
    drop hitjs_br
  fi
  [ -f "$BROTLI_MODULE" ] || try_apt_install libnginx-mod-http-brotli-static || true
  if [ "$HAVE_BROTLI_CLI" = 1 ] && [ -f "$BROTLI_MODULE" ]; then NGINX_BROTLI=1; elif [ "$HAVE_BROTLI_CLI" = 1 ]; then
    note "hitjs_br: nginx n/a, its brotli module ($BROTLI_MODULE, Debian libnginx-mod-http-brotli-static) is not installed and could not be installed: $(apt-cache policy libnginx-mod-http-brotli-static 2>/dev/null | awk '/Candidate/ { print "candidate " $2 }')"
  fi
fi
HAVE_VARNISH=0
if want mirror; then
  command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || try_apt_install varnish || true
  VARNISHD=$(command -v varnishd 2>/dev/null || { [ -x /usr/sbin/varnishd ] && echo /usr/sbin/varnishd; } || true)
  if [ -n "$VARNISHD" ]; then HAVE_VARNISH=1; else
    note "mirror: Varnish n/a, varnishd (Debian varnish) is missing and could not be installed"
  fi
fi
HAVE_MOTO=0
if want s3_hit4k && [ "$ORIGINPULL_SKIP" = 1 ]; then
  drop s3_hit4k  # originpull against itself
elif want s3_hit4k; then
  if [ -x "$MOTO_VENV/bin/python" ]; then HAVE_MOTO=1; else
    note "s3_hit4k: n/a, moto's venv $MOTO_VENV/bin/python is missing (run .ci/setup, or set ORIGINPULL_MOTO_VENV)"
    drop s3_hit4k
  fi
fi

OP_BIN=""
target_dir() { (cd "$REPO_ROOT" && mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd); }
if [ "$ORIGINPULL_SKIP" = 1 ]; then
  log "ORIGINPULL_SKIP=1: debugging mode, originpull is neither built nor benchmarked"
elif [ -n "$ORIGINPULL_BIN" ]; then
  OP_BIN=$(cd "$(dirname "$ORIGINPULL_BIN")" && pwd)/$(basename "$ORIGINPULL_BIN")
  [ -x "$OP_BIN" ] || die "ORIGINPULL_BIN=$ORIGINPULL_BIN is not an executable file"
  log "using prebuilt originpull $OP_BIN (ORIGINPULL_BIN; not building)"
else
  log "building originpull (cargo build --release) in $REPO_ROOT"
  (cd "$REPO_ROOT" && cargo build --release >&2) || die "cargo build --release failed"
  OP_BIN="$(target_dir)/release/originpull"
  [ -x "$OP_BIN" ] || die "originpull binary not found at $OP_BIN"
fi
# The floor stands in the 4 KiB-hit and 302 scenarios only.
if [ "$BARE" = 1 ] && ! want hit4k hit4k_many hit4k_disk redirect redirect_distinct; then BARE=0; fi
if [ "$BARE" = 1 ]; then
  if [ -n "${BARE_PINGORA_BIN:-}" ]; then BARE_BIN=$BARE_PINGORA_BIN; else
    (cd "$REPO_ROOT" && cargo build --release --example bare_pingora -q) || die "cannot build examples/bare_pingora"
    BARE_BIN="$(target_dir)/release/examples/bare_pingora"
  fi
  [ -x "$BARE_BIN" ] || die "bare Pingora binary $BARE_BIN is not an executable file"
fi

# ---------------------------------------------------------------- work dir + cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/originpull-bench.XXXXXX")
chmod 755 "$WORK"  # nginx workers and Varnish (non-root users) must traverse it
# Every process this script starts is an "instance" with a directory $WORK/NAME, a port and a
# pid: op (originpull, disk store), op_disk (memory tier off), op_s3 (S3 store), op_mirror,
# nginx, nginx_mirror (proxy_cache), varnish, floor4k, floor302, origin (nginx), moto.
declare -A PID=() PORT=() ADMIN=()

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
stop() {  # stop INSTANCE (TERM stops nginx's master and workers, varnishd's manager and child)
  [ -n "${PID[$1]:-}" ] || return 0
  stop_pid "${PID[$1]}" "$1"
  unset "PID[$1]"
}

cleanup() {
  local rc=$? inst
  trap - EXIT INT TERM
  for inst in "${!PID[@]}"; do stop "$inst"; done
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
# new_instance NAME: its directory and a free loopback port. Ports are taken while every
# instance's port is known, so two never collide while held.
new_instance() {
  mkdir -p "$WORK/$1"
  chmod 755 "$WORK/$1"
  PORT[$1]=$(free_port)
}
url() { echo "http://127.0.0.1:${PORT[$1]}"; }

# http_code URL [extra curl args...]: prints the status code (000 if no answer)
http_code() {
  local url=$1; shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $HOST_HDR" "$@" "$url" || true
}

# wait_listening INSTANCE LOGFILE: until anything answers HTTP on its port (30 s)
wait_listening() {
  local inst=$1 logf=$2
  for _ in $(seq 300); do
    kill -0 "${PID[$inst]}" 2>/dev/null || { tail -n 30 "$logf" >&2 || true; die "$inst exited during startup (log above: $logf)"; }
    [ "$(http_code "$(url "$inst")/")" != 000 ] && return 0
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$inst did not answer on $(url "$inst") within 30 s"
}

# head_of URL [curl args...]: the response head, CRs removed
head_of() { curl -s -o /dev/null -D - --max-time 5 -H "Host: $HOST_HDR" "${@:2}" "$1" | tr -d '\r' || true; }
location_of() { head_of "$1" | awk 'tolower($1) == "location:" { print $2 }'; }
md5_of_url() { curl -s --max-time 10 -H "Host: $HOST_HDR" "$1" | md5sum | cut -d' ' -f1; }
vmhwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
access_log_to() { if [ "$LOGS" = on ]; then echo "$1"; else echo off; fi; }

# The log each server writes as it runs: what the run's "log bytes" column measures.
log_file_of() {
  case "$1" in
    op*) echo "$WORK/$1/stderr" ;;
    nginx*|origin) echo "$WORK/$1/error.log" ;;
    *) echo "$WORK/$1/out" ;;
  esac
}
file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- nginx instances
NGINX_USER_LINE=""
[ "$(id -u)" -eq 0 ] && NGINX_USER_LINE="user root;"
# open_file_cache keeps a descriptor open per cached file, in each worker: sized for every
# object, unless the descriptor limit cannot be raised that far (setrlimit beyond the hard
# limit needs CAP_SYS_RESOURCE, which a container may lack even as root).
NGINX_WORKER_CONNECTIONS=$((IDLE_CONNECTIONS + 4096))
NGINX_NOFILE=$((OBJECTS + 10000 + NGINX_WORKER_CONNECTIONS + 1000))
OPEN_FILE_CACHE=$((OBJECTS + 10000))
if ! (ulimit -n "$NGINX_NOFILE") 2>/dev/null; then
  NGINX_NOFILE=$(ulimit -Hn)
  room=$((NGINX_NOFILE - NGINX_WORKER_CONNECTIONS - 1000))
  [ "$room" -ge 1000 ] || die "the open files limit ($NGINX_NOFILE) is too low for nginx; raise it (ulimit -Hn)"
  [ "$room" -lt "$OPEN_FILE_CACHE" ] && OPEN_FILE_CACHE=$room
  [ "$OPEN_FILE_CACHE" -lt "$OBJECTS" ] && want hit4k_many && note "nginx: open_file_cache max=$OPEN_FILE_CACHE, less than the $OBJECTS objects: the open files limit here is $NGINX_NOFILE and cannot be raised (setrlimit needs CAP_SYS_RESOURCE); each worker keeps at most that many files open"
fi

# start_nginx NAME HTTP_BLOCK [MAIN_LINES]: an nginx of 2 workers in the foreground of this
# shell, temp files and error log in $WORK/NAME.
start_nginx() {
  local dir="$WORK/$1"
  mkdir -p "$dir/temp"
  cat >"$dir/nginx.conf" <<EOF
$NGINX_USER_LINE
${3:-}
worker_processes 2;
worker_rlimit_nofile $NGINX_NOFILE;
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections $NGINX_WORKER_CONNECTIONS; }
http {
    client_body_temp_path $dir/temp/client_body;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    default_type application/octet-stream;
    types { application/javascript js; }
    sendfile on;
    tcp_nopush on;
$2
}
EOF
  local args=(-p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log")
  "$NGINX_BIN" "${args[@]}" -t >"$dir/nginx-t.log" 2>&1 || { cat "$dir/nginx-t.log" >&2; die "nginx -t rejected $dir/nginx.conf"; }
  "$NGINX_BIN" "${args[@]}" -g 'daemon off;' >"$dir/out" 2>&1 &
  PID[$1]=$!
  wait_listening "$1" "$dir/error.log"
}

# The origin: nginx serving $WWW on its port, counting the GETs it answers in gets.log.
start_origin() {
  : >"$WORK/origin/gets.log"
  start_nginx origin "    log_format counted '\$request_uri';
    server {
        listen 127.0.0.1:${PORT[origin]};
        access_log $WORK/origin/gets.log counted;
        root $WWW;
    }"
}
origin_gets() { wc -l <"$WORK/origin/gets.log"; }

# ---------------------------------------------------------------- originpull instances
umask_before=$(umask); umask 077
echo bench-token >"$WORK/admin.token"
umask "$umask_before"

# start_originpull NAME ORIGIN_PORT MODE [EXTRA_YAML] [MEMORY_CACHE_YAML]: originpull with the
# bench bucket whose origin is 127.0.0.1:ORIGIN_PORT, an admin listener for prefetch, at the
# default log level; its open files kept and its connections as nginx's (open_file_cache max,
# worker_connections), MEMORY_CACHE_YAML one more line of memory_cache.
start_originpull() {
  local name=$1 dir="$WORK/$1"
  ADMIN[$name]=$(free_port)
  mkdir -p "$dir/data"
  cat >"$dir/originpull.yaml" <<EOF
listen: 127.0.0.1:${PORT[$name]}
admin_listen: 127.0.0.1:${ADMIN[$name]}
admin_token_file: $WORK/admin.token
data_dir: $dir/data
domain_suffix: $DOMAIN_SUFFIX
access_log: "$(access_log_to "$dir/access.log")"
server:
  threads: 2
  max_connections: $NGINX_WORKER_CONNECTIONS
  grace_period_secs: 0
  graceful_shutdown_timeout_secs: 1
  pid_file: $dir/originpull.pid
  upgrade_sock: $dir/upgrade.sock
memory_cache:
  open_files: $OPEN_FILE_CACHE
${5:+  $5}
${4:-}
buckets:
  - name: $BUCKET
    origin_pull:
      enabled: true
      mode: $3
      origin: 127.0.0.1:$2
EOF
  env -u RUST_LOG "$OP_BIN" -c "$dir/originpull.yaml" >"$dir/stdout" 2>"$dir/stderr" &
  PID[$name]=$!
  wait_listening "$name" "$dir/stderr"
}

# prefetch NAME KEYFILE: copies every key into the instance's bucket from its origin.
prefetch() {
  local t0 rc=0
  t0=$(date +%s.%N)
  "$OP_BIN" prefetch --admin "http://127.0.0.1:${ADMIN[$1]}" --token-file "$WORK/admin.token" \
    --bucket "$BUCKET" "$2" 2>"$WORK/$1/prefetch.log" || rc=$?
  [ "$rc" = 0 ] || { tail -n 5 "$WORK/$1/prefetch.log" >&2; die "$1: originpull prefetch of $2 exited $rc"; }
  log "  $1: prefetched $(wc -l <"$2") keys in $(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }') s"
}

# wait_encoding URL ENCODING ACCEPT: until the answer comes with Content-Encoding ENCODING
# (variants are made in the background after the first request asking for them).
wait_encoding() {
  for _ in $(seq 300); do
    head_of "$1" -H "Accept-Encoding: $3" | grep -qi "^content-encoding: $2\$" && return 0
    sleep 0.1
  done
  die "$1 never served $2-encoded"
}

# ---------------------------------------------------------------- objects
WWW="$WORK/www"
mkdir -p "$WWW" "$WORK/wrk"
chmod 755 "$WWW"
head -c 4096 /dev/urandom >"$WWW/obj4k"
head -c 1048576 /dev/urandom >"$WWW/obj1m"
# 100 KB of JavaScript-like text, and nginx's precompressed copies of it.
python3 "$LOAD_PY" js >"$WWW/app.js"
gzip -9 -k -n "$WWW/app.js"
[ "$HAVE_BROTLI_CLI" = 1 ] && brotli -q 11 -k "$WWW/app.js"
chmod 644 "$WWW"/obj4k "$WWW"/obj1m "$WWW"/app.js*
MD5_4K=$(md5sum <"$WWW/obj4k" | cut -d' ' -f1)
MD5_1M=$(md5sum <"$WWW/obj1m" | cut -d' ' -f1)
MD5_JS=$(md5sum <"$WWW/app.js" | cut -d' ' -f1)
printf '%s\n' obj4k obj1m app.js >"$WORK/keys-main.txt"
: >"$WORK/keys-many.txt"; : >"$WORK/keys-disk.txt"
# object_set PREFIX COUNT SIZE KEYFILE
object_set() {
  log "writing $2 objects of $3 bytes under $WWW/$1"
  python3 "$LOAD_PY" objects "$WWW" "$1" "$2" "$3" >"$4"
  find "$WWW/$1" -type d -exec chmod 755 {} +
}
want hit4k_many && object_set o/ "$OBJECTS" 4096 "$WORK/keys-many.txt"
want hit4k_disk && object_set d/ "$DISK_OBJECTS" 4096 "$WORK/keys-disk.txt"
want mirror && object_set m/ "$MIRROR_KEYS" "$MIRROR_SIZE" "$WORK/keys-mirror.txt"

# ---------------------------------------------------------------- which servers are needed
NEED_OP=0; NEED_OP_DISK=0; NEED_OP_S3=0; NEED_NGINX=0
if [ "$ORIGINPULL_SKIP" != 1 ]; then
  want hit4k hit4k_many hit1m hitjs_gzip hitjs_br redirect redirect_distinct idle s3_hit4k && NEED_OP=1
  want hit4k_disk && NEED_OP_DISK=1
  [ "$HAVE_MOTO" = 1 ] && NEED_OP_S3=1
fi
want hit4k hit4k_many hit4k_disk hit1m hitjs_gzip hitjs_br redirect redirect_distinct idle && NEED_NGINX=1
for inst in origin op op_disk op_s3 op_mirror nginx nginx_mirror varnish floor4k floor302 moto; do
  new_instance "$inst"
done
ORIGIN_PORT=${PORT[origin]}

# ---------------------------------------------------------------- originpull: load the buckets
if [ $((NEED_OP + NEED_OP_DISK + NEED_OP_S3)) -gt 0 ]; then
  log "starting the loopback origin (nginx) on $(url origin)"
  start_origin
  if [ "$NEED_OP_S3" = 1 ]; then
    log "starting moto (tests/s3_server.py) for the S3 store"
    "$MOTO_VENV/bin/python" "$REPO_ROOT/tests/s3_server.py" serve >"$WORK/moto/port" 2>"$WORK/moto/out" </dev/null &
    PID[moto]=$!
    for _ in $(seq 100); do grep -q PORT "$WORK/moto/port" 2>/dev/null && break; sleep 0.1; done
    grep -q PORT "$WORK/moto/port" || { cat "$WORK/moto/out" >&2; die "moto did not start"; }
    S3_ENDPOINT="http://127.0.0.1:$(awk '{ print $2 }' "$WORK/moto/port")"
    "$MOTO_VENV/bin/python" "$REPO_ROOT/tests/s3_server.py" "$S3_ENDPOINT" mb "$BUCKET" >&2
    printf '[default]\naws_access_key_id = bench\naws_secret_access_key = bench\n' >"$WORK/moto/credentials"
  fi
  if [ "$NEED_OP" = 1 ]; then
    log "starting originpull (disk store, memory tier at its default) on $(url op)"
    start_originpull op "$ORIGIN_PORT" redirect
    cat "$WORK/keys-main.txt" "$WORK/keys-many.txt" >"$WORK/keys-op.txt"
    prefetch op "$WORK/keys-op.txt"
    want hitjs_gzip && wait_encoding "$(url op)/app.js" gzip gzip
    want hitjs_br && [ "$HAVE_BROTLI_CLI" = 1 ] && wait_encoding "$(url op)/app.js" br "gzip, br"
  fi
  if [ "$NEED_OP_DISK" = 1 ]; then
    log "starting originpull with the memory tier off on $(url op_disk)"
    start_originpull op_disk "$ORIGIN_PORT" redirect "" "max_bytes: 0"
    prefetch op_disk "$WORK/keys-disk.txt"
  fi
  if [ "$NEED_OP_S3" = 1 ]; then
    log "starting originpull with the S3 store (moto at $S3_ENDPOINT) on $(url op_s3)"
    start_originpull op_s3 "$ORIGIN_PORT" redirect "store:
  backend: s3
  s3: {endpoint: \"$S3_ENDPOINT\", region: us-east-1, path_style: true, credentials_file: $WORK/moto/credentials}"
    echo obj4k >"$WORK/keys-s3.txt"
    prefetch op_s3 "$WORK/keys-s3.txt"
  fi
  log "objects are in the buckets; stopping the origin (its port becomes the dead origin)"
  stop origin
fi

# ---------------------------------------------------------------- nginx
if [ "$NEED_NGINX" = 1 ]; then
  NGINX_BROTLI_LINES=""; NGINX_LOAD_BROTLI=""
  if [ "$NGINX_BROTLI" = 1 ]; then
    NGINX_LOAD_BROTLI="load_module $BROTLI_MODULE;"
    NGINX_BROTLI_LINES="brotli_static on;"
  fi
  log "starting nginx on $(url nginx)"
  start_nginx nginx "    access_log $(access_log_to "$WORK/nginx/access.log");
    gzip on;
    gzip_static on;
    gzip_types application/javascript;
    gzip_comp_level 9;
    gzip_vary on;
    $NGINX_BROTLI_LINES
    keepalive_requests 100000;
    keepalive_timeout 300s;
    # As an operator tunes nginx for static files: descriptors and stat results are cached,
    # misses included, for every object (issue #23).
    open_file_cache max=$OPEN_FILE_CACHE inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_errors on;

    server {
        listen 127.0.0.1:${PORT[nginx]};
        server_name $HOST_HDR;

        location / {
            root $WWW;
            try_files \$uri @origin;
        }
        location @origin {
            return 302 http://127.0.0.1:$ORIGIN_PORT\$request_uri;
        }
    }" "$NGINX_LOAD_BROTLI"
fi

# ---------------------------------------------------------------- bare Pingora
if [ "$BARE" = 1 ]; then
  "$BARE_BIN" 4k "127.0.0.1:${PORT[floor4k]}" 2 >"$WORK/floor4k/out" 2>&1 & PID[floor4k]=$!
  "$BARE_BIN" 302 "127.0.0.1:${PORT[floor302]}" 2 >"$WORK/floor302/out" 2>&1 & PID[floor302]=$!
  wait_listening floor4k "$WORK/floor4k/out"
  wait_listening floor302 "$WORK/floor302/out"
fi

# ---------------------------------------------------------------- who runs what
# servers_for SCENARIO: the servers of its rounds, in their order.
servers_for() {
  local s=()
  case "$1" in
    s3_hit4k) [ "$NEED_OP_S3" = 1 ] && s=(originpull disk_store) ;;
    mirror)
      [ "$ORIGINPULL_SKIP" != 1 ] && s+=(originpull)
      s+=(nginx)
      [ "$HAVE_VARNISH" = 1 ] && s+=(varnish) ;;
    *)
      [ "$ORIGINPULL_SKIP" != 1 ] && s+=(originpull)
      [ "$1" != hitjs_br ] || [ "$NGINX_BROTLI" = 1 ] && s+=(nginx)
      case "$1" in hit4k|hit4k_many|hit4k_disk|redirect|redirect_distinct) [ "$BARE" = 1 ] && s+=(pingora) ;; esac ;;
  esac
  echo "${s[@]}"
}
# instance_of SERVER SCENARIO
instance_of() {
  case "$1:$2" in
    originpull:hit4k_disk) echo op_disk ;;
    originpull:s3_hit4k) echo op_s3 ;;
    originpull:mirror) echo op_mirror ;;
    originpull:*|disk_store:*) echo op ;;
    nginx:mirror) echo nginx_mirror ;;
    nginx:*) echo nginx ;;
    varnish:*) echo varnish ;;
    pingora:redirect*) echo floor302 ;;
    pingora:*) echo floor4k ;;
  esac
}

# ---------------------------------------------------------------- sanity checks
# check_get SERVER_LABEL URL SIZE MD5: a 200 of SIZE bytes whose MD5 is MD5
check_get() {
  local res got
  res=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 10 -H "Host: $HOST_HDR" "$2" || true)
  [ "$res" = "200 $3" ] || die "$1: GET $2 gave '$res', expected '200 $3'"
  got=$(md5_of_url "$2")
  [ "$got" = "$4" ] || die "$1: GET $2 md5 $got differs from the source file's $4"
}
# check_encoded SERVER_LABEL URL ENCODING ACCEPT DECODER: the answer is ENCODING-encoded and
# DECODER turns it back into app.js
check_encoded() {
  local out="$WORK/check.$3" got
  [ "$(curl -s -o "$out" -D "$out.head" -w '%{http_code}' --max-time 10 -H "Host: $HOST_HDR" \
    -H "Accept-Encoding: $4" "$2" || true)" = 200 ] || die "$1: GET $2 ($4) did not answer 200"
  tr -d '\r' <"$out.head" | grep -qi "^content-encoding: $3\$" || die "$1: GET $2 with Accept-Encoding '$4' was not $3-encoded"
  got=$($5 <"$out" | md5sum | cut -d' ' -f1)
  [ "$got" = "$MD5_JS" ] || die "$1: GET $2 ($3) decodes to md5 $got, not the source's $MD5_JS"
  log "  $1: /app.js $3, $(wc -c <"$out") bytes, decodes to the source"
}
check_302() {
  local code loc
  code=$(http_code "$2$3")
  [ "$code" = 302 ] || die "$1: GET $3 gave $code, expected 302"
  loc=$(location_of "$2$3")
  [ "$loc" = "http://127.0.0.1:$ORIGIN_PORT$3" ] || die "$1: GET $3 Location '$loc', expected 'http://127.0.0.1:$ORIGIN_PORT$3'"
}
# Objects number 0, the middle one and the last of a set.
check_set() {
  local i key
  for i in 0 $(($3 / 2)) $(($3 - 1)); do
    key=$(sed -n "$((i + 1))p" "$4")
    check_get "$1" "$2/$key" 4096 "$(md5sum <"$WWW/$key" | cut -d' ' -f1)"
  done
}

log "sanity checks"
for sc in "${SELECTED[@]}"; do
  [ "$sc" = mirror ] || [ "$sc" = idle ] && continue
  for s in $(servers_for "$sc"); do
    u=$(url "$(instance_of "$s" "$sc")")
    if [ "$s" = pingora ]; then
      if [[ $sc == redirect* ]]; then
        [ "$(http_code "$u$MISS_PATH")" = 302 ] || die "bare pingora: no 302"
      else
        res=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 10 "$u/obj4k" || true)
        [ "$res" = "200 4096" ] || die "bare pingora: GET /obj4k gave '$res', expected '200 4096'"
      fi
      continue
    fi
    case "$sc" in
      hit4k|s3_hit4k) check_get "$s/$sc" "$u/obj4k" 4096 "$MD5_4K" ;;
      hit4k_many) check_set "$s/$sc" "$u" "$OBJECTS" "$WORK/keys-many.txt" ;;
      hit4k_disk) check_set "$s/$sc" "$u" "$DISK_OBJECTS" "$WORK/keys-disk.txt" ;;
      hit1m) check_get "$s/$sc" "$u/obj1m" 1048576 "$MD5_1M" ;;
      hitjs_gzip) check_encoded "$s" "$u/app.js" gzip gzip "gunzip -c" ;;
      hitjs_br) check_encoded "$s" "$u/app.js" br "gzip, br" "brotli -d -c" ;;
      redirect) check_302 "$s" "$u" "$MISS_PATH" ;;
      redirect_distinct) check_302 "$s" "$u" /miss/sanity/0/1.bin ;;
    esac
  done
  log "  $sc: $(servers_for "$sc") answer as expected"
done

# ---------------------------------------------------------------- measuring
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
CLK_TCK=$(getconf CLK_TCK)
RUN_SEQ=0

# wrk_args SCENARIO: what wrk sends: the Lua script, the path, the script's arguments.
wrk_args() {
  case "$1" in
    hit4k|s3_hit4k) echo "summary.lua /obj4k" ;;
    hit4k_many) echo "random_keys.lua / -- o/ $OBJECTS" ;;
    hit4k_disk) echo "random_keys.lua / -- d/ $DISK_OBJECTS" ;;
    hit1m) echo "summary.lua /obj1m" ;;
    hitjs_gzip|hitjs_br) echo "summary.lua /app.js" ;;
    redirect) echo "summary.lua $MISS_PATH" ;;
    redirect_distinct) echo "distinct_misses.lua / -- $$-$RUN_SEQ" ;;
    mirror) echo "random_keys.lua / -- m/ $MIRROR_KEYS" ;;
  esac
}

# run_wrk SERVER SCENARIO SECONDS OUTFILE
run_wrk() {
  local lua path rest extra=() conns=$CONNECTIONS inst
  inst=$(instance_of "$1" "$2")
  RUN_SEQ=$((RUN_SEQ + 1))  # distinct_misses.lua's tag: no two runs ask for the same key
  read -r lua path rest <<<"$(wrk_args "$2")"
  case "$2" in
    hitjs_gzip) extra=(-H 'Accept-Encoding: gzip') ;;
    hitjs_br) extra=(-H 'Accept-Encoding: gzip, br') ;;
    mirror) conns=$MIRROR_CLIENTS ;;
  esac
  # shellcheck disable=SC2086 # rest: "-- ARGS..." for the Lua script, split on purpose
  wrk -t "$THREADS" -c "$conns" -d "${3}s" --timeout 5s --latency -H "Host: $HOST_HDR" "${extra[@]}" \
    -s "$WRK_LUA/$lua" "$(url "$inst")$path" $rest >"$4" 2>&1 || { cat "$4" >&2; die "wrk failed against $1 ($inst)"; }
}

# cold_pass SERVER OUTFILE: the mirror scenario's cold set, each key once
cold_pass() {
  python3 "$LOAD_PY" cold "$(url "$(instance_of "$1" mirror)")" "$HOST_HDR" m/ "$MIRROR_KEYS" "$MIRROR_SIZE" \
    "$MIRROR_CLIENTS" >"$2" 2>&1 || { cat "$2" >&2; die "cold pass against $1 failed"; }
}

# measure LABEL ROUND SERVER SCENARIO COMMAND...: runs COMMAND (whose last argument is the
# output file) and appends its result with the CPU time and log growth of the server's
# processes to $RESULTS.
measure() {
  local label=$1 r=$2 s=$3 inst out="${*: -1}" pids u0 s0 u1 s1 log0 row rps bps p99 sockerr staterr
  inst=$(instance_of "$s" "$4")
  shift 4
  mapfile -t pids < <(proc_tree "${PID[$inst]}")
  log0=$(file_size "$(log_file_of "$inst")")
  read -r u0 s0 < <(cpu_ticks "${pids[@]}")
  "$@"
  read -r u1 s1 < <(cpu_ticks "${pids[@]}")
  row=$(python3 "$REPORT_PY" parse "$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$r" "$s" "$row" "$((u1 - u0))" "$((s1 - s0))" \
    "$(($(file_size "$(log_file_of "$inst")") - log0))" >>"$RESULTS"
  read -r rps bps p99 _ _ _ sockerr staterr _ <<<"$row"
  log "  -> $(awk -v a="$rps" -v b="$bps" -v c="$p99" -v t="$(((u1 - u0) + (s1 - s0)))" -v n="$(cut -f5 <<<"$row")" -v hz="$CLK_TCK" \
    'BEGIN { printf "%.1f req/s, %.1f MiB/s, p99 %.3f ms, CPU %.1f us/req", a, b / 1048576, c / 1000, n ? t / hz / n * 1e6 : 0 }'), socket errors $sockerr, status errors $staterr"
  if [ "$sockerr" != 0 ] || [ "$staterr" != 0 ]; then
    log "  WARNING: errors in this run; output: $out"
    grep -E 'Socket errors|Non-2xx|^cold:' "$out" >&2 || true
  fi
}

# ---------------------------------------------------------------- wrk scenarios, interleaved
for sc in "${SELECTED[@]}"; do
  [ "$sc" = mirror ] || [ "$sc" = idle ] && continue
  read -r -a servers <<<"$(servers_for "$sc")"
  [ ${#servers[@]} -gt 0 ] || continue
  if [ "$WARMUP" -gt 0 ]; then
    for s in "${servers[@]}"; do
      log "warm-up $sc $s (${WARMUP}s)"
      run_wrk "$s" "$sc" "$WARMUP" "$WORK/wrk/warmup-$sc-$s.txt"
    done
  fi
  for r in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
      log "round $r/$ROUNDS $sc $s (${DURATION}s, $THREADS threads, $CONNECTIONS connections)"
      measure "$sc" "$r" "$s" "$sc" run_wrk "$s" "$sc" "$DURATION" "$WORK/wrk/$sc-$r-$s.txt"
      sleep 1
    done
  done
done

# ---------------------------------------------------------------- mirror: cold and warm
# start_mirror SERVER: a fresh one, with an empty cache, pulling from the origin. The previous
# round's cache is moved aside, not deleted: ext4 skips inodes freed in the last minutes when it
# makes files, and with thousands just freed every file and directory the next server made cost
# far more CPU (a quarter of originpull's in `perf`, nginx's rising round after round too).
start_mirror() {
  local inst
  inst=$(instance_of "$1" mirror)
  if [ -d "${WORK:?}/$inst" ]; then
    mkdir -p "$WORK/previous-rounds"
    mv "$WORK/$inst" "$WORK/previous-rounds/$inst.$(date +%s%N)"
  fi
  mkdir -p "$WORK/$inst"
  chmod 755 "$WORK/$inst"
  case "$1" in
    originpull) start_originpull op_mirror "${PORT[origin]}" mirror ;;
    nginx) start_nginx nginx_mirror "    access_log $(access_log_to "$WORK/nginx_mirror/access.log");
    keepalive_requests 100000;
    proxy_cache_path $WORK/nginx_mirror/cache levels=1:2 keys_zone=mirror:16m max_size=4g inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:${PORT[origin]};
        keepalive 32;
    }
    server {
        listen 127.0.0.1:${PORT[nginx_mirror]};
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_cache mirror;
            proxy_cache_lock on;
            proxy_cache_valid 200 1h;
        }
    }" ;;
    varnish)
      "$VARNISHD" -F -a "127.0.0.1:${PORT[varnish]}" -b "127.0.0.1:${PORT[origin]}" -s malloc,256m \
        -n "$WORK/varnish/varnish" >"$WORK/varnish/out" 2>&1 &
      PID[varnish]=$!
      wait_listening varnish "$WORK/varnish/out" ;;
  esac
}

MIRROR_GETS="$WORK/mirror-origin-gets.tsv"
: >"$MIRROR_GETS"
if want mirror; then
  read -r -a servers <<<"$(servers_for mirror)"
  log "starting the mirror scenario's origin (nginx) on $(url origin)"
  start_origin
  for r in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
      inst=$(instance_of "$s" mirror)
      start_mirror "$s"
      g0=$(origin_gets)
      log "round $r/$ROUNDS mirror cold $s ($MIRROR_KEYS keys of $MIRROR_SIZE bytes, $MIRROR_CLIENTS clients)"
      measure mirror_cold "$r" "$s" mirror cold_pass "$s" "$WORK/wrk/mirror_cold-$r-$s.txt"
      printf '%s\t%s\t%s\n' "$r" "$s" "$(($(origin_gets) - g0))" >>"$MIRROR_GETS"
      sleep 1
      [ "$WARMUP" -gt 0 ] && run_wrk "$s" mirror "$WARMUP" "$WORK/wrk/warmup-mirror-$r-$s.txt"
      log "round $r/$ROUNDS mirror warm $s (${DURATION}s, $THREADS threads, $MIRROR_CLIENTS connections)"
      measure mirror_warm "$r" "$s" mirror run_wrk "$s" mirror "$DURATION" "$WORK/wrk/mirror_warm-$r-$s.txt"
      cp "$(log_file_of "$inst")" "$WORK/$inst-round$r.log" 2>/dev/null || true
      stop "$inst"
      sleep 1
    done
  done
  stop origin
fi

# ---------------------------------------------------------------- peak RSS
RSS="$WORK/rss.tsv"
: >"$RSS"
for pair in originpull:op nginx:nginx; do
  s=${pair%%:*}; inst=${pair#*:}
  [ -n "${PID[$inst]:-}" ] || continue
  kill -0 "${PID[$inst]}" 2>/dev/null || die "$s died during the benchmark (log: $(log_file_of "$inst"))"
  total=0; maxone=0; n=0
  for p in $(proc_tree "${PID[$inst]}"); do
    hwm=$(vmhwm_kib "$p")
    [ -n "$hwm" ] || continue
    total=$((total + hwm)); n=$((n + 1))
    [ "$hwm" -gt "$maxone" ] && maxone=$hwm
  done
  printf '%s\t%s\t%s\t%s\n' "$s" "$total" "$maxone" "$n" >>"$RSS"
done

# ---------------------------------------------------------------- idle connections
IDLE="$WORK/idle.tsv"
: >"$IDLE"
if want idle; then
  for pair in originpull:op nginx:nginx; do
    s=${pair%%:*}; inst=${pair#*:}
    [ -n "${PID[$inst]:-}" ] || continue
    log "idle: $IDLE_CONNECTIONS keep-alive connections to $s"
    mapfile -t pids < <(proc_tree "${PID[$inst]}")
    res=$(python3 "$LOAD_PY" idle "$HOST_HDR" "${PORT[$inst]}" /obj4k 200 "$IDLE_CONNECTIONS" 2 "${pids[@]}") \
      || die "idle connections to $s failed"
    printf '%s\t%s\t%s\t%s\n' "$s" "$IDLE_CONNECTIONS" "${#pids[@]}" "${res// /$'\t'}" >>"$IDLE"
  done
fi

# ---------------------------------------------------------------- logs
LOGSIZES="$WORK/logs.tsv"
: >"$LOGSIZES"
for inst in op op_disk op_s3 nginx floor4k floor302; do
  [ -n "${PID[$inst]:-}" ] || continue
  f=$(log_file_of "$inst")
  printf '%s\t%s\t%s\t%s\n' "$inst" "${f#"$WORK"/}" "$(file_size "$f")" "$(wc -l <"$f" 2>/dev/null || echo 0)" >>"$LOGSIZES"
done
for f in "$WORK"/op_mirror-round*.log "$WORK"/nginx_mirror-round*.log "$WORK"/varnish-round*.log; do
  [ -f "$f" ] || continue
  printf '%s\t%s\t%s\t%s\n' "$(basename "$f" .log)" "$(basename "$f")" "$(file_size "$f")" "$(wc -l <"$f")" >>"$LOGSIZES"
done

# ---------------------------------------------------------------- report
CMDLINE=$(printf '%q ' "$0" "${ORIG_ARGS[@]}")
{
  echo "## originpull vs nginx, side by side"
  echo
  echo "- machine: $(nproc) CPU(s), $(uname -srm), $(awk '/^model name/ { sub(/^[^:]*: /, ""); print; exit }' /proc/cpuinfo 2>/dev/null || true)"
  echo "- command: \`SCENARIOS='${SELECTED[*]}' ROUNDS=$ROUNDS DURATION=$DURATION THREADS=$THREADS CONNECTIONS=$CONNECTIONS WARMUP=$WARMUP LOGS=$LOGS OBJECTS=$OBJECTS DISK_OBJECTS=$DISK_OBJECTS MIRROR_KEYS=$MIRROR_KEYS MIRROR_SIZE=$MIRROR_SIZE MIRROR_CLIENTS=$MIRROR_CLIENTS IDLE_CONNECTIONS=$IDLE_CONNECTIONS ORIGINPULL_SKIP=$ORIGINPULL_SKIP BARE=$BARE${ORIGINPULL_BIN:+ ORIGINPULL_BIN=$ORIGINPULL_BIN}${BARE_PINGORA_BIN:+ BARE_PINGORA_BIN=$BARE_PINGORA_BIN} ${CMDLINE% }\`"
  echo "- wrk: \`wrk -t $THREADS -c $CONNECTIONS -d ${DURATION}s --timeout 5s --latency -H 'Host: $HOST_HDR' -s benches/wrk/SCRIPT URL [-- ARGS]\` ($(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }'))"
  echo "- nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 2, sendfile, open_file_cache max=$OPEN_FILE_CACHE (errors cached), gzip_static, brotli_static: $([ "$NGINX_BROTLI" = 1 ] && echo yes || echo no)$([ "$HAVE_VARNISH" = 1 ] && echo "; Varnish: $("$VARNISHD" -V 2>&1 | head -n 1 | sed 's/^varnishd (\(.*\) revision.*/\1/'), -s malloc,256m")"
  echo "- originpull: server.threads 2, serving defaults otherwise, default log level (RUST_LOG unset), objects copied in by \`originpull prefetch\` from a loopback nginx origin; the floor: examples/bare_pingora, Pingora's own listening service on a SO_REUSEPORT socket per worker (2 workers); access logs: $LOGS"
  if [ "$ORIGINPULL_SKIP" = 1 ]; then
    echo "- **ORIGINPULL_SKIP=1: debugging run, originpull was not benchmarked**"
  fi
  for n in "${NOTES[@]}"; do echo "- $n"; done
  echo
  python3 "$REPORT_PY" report "$RESULTS" "$RSS" "$IDLE" "$MIRROR_GETS" "$LOGSIZES" "$CLK_TCK"
}
