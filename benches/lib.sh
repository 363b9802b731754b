# shellcheck shell=bash
# Shared by the benchmark scripts in benches/ (source it; it defines functions only):
# logging, installing a missing tool, free loopback ports, resident memory and CPU time of a
# process tree, the originpull binary and the head of its config, and an nginx on loopback with
# a given server block.
#
# A script sets BENCH (its name, for log lines) and WORK (its temp dir) before using these.

log() { echo "[$BENCH] $*" >&2; }
die() { log "error: $*"; exit 1; }

# need CMD PACKAGE: installs PACKAGE from Debian when CMD is missing.
need() { command -v "$1" >/dev/null 2>&1 || { log "installing $2"; apt-get install -y -qq "$2" >/dev/null; }; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# rss_kib PID: resident memory now, in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# proc_tree PID: PID and all its descendants (an nginx master and its workers, varnishd's
# manager and its child), one a line.
proc_tree() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" || true); do proc_tree "$child"; done
}

# cpu_ticks PID...: "user system" CPU time of the processes so far, in clock ticks
# (getconf CLK_TCK), all threads included; fields 14 and 15 of /proc/PID/stat, counted after
# the command name, which may hold spaces. A process gone meanwhile counts nothing.
cpu_ticks() {
  local pid
  for pid in "$@"; do sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null || true; done |
    awk '{ u += $12; s += $13 } END { print u + 0, s + 0 }'
}

# Sets OP_BIN: $ORIGINPULL_BIN, or a fresh release build of this checkout.
originpull_bin() {
  if [ -n "${ORIGINPULL_BIN:-}" ]; then OP_BIN=$ORIGINPULL_BIN; else
    (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release -q)
    OP_BIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/originpull"
  fi
}

# The first lines of a benchmark's originpull config: loopback ports $OP_PORT and $METRICS_PORT,
# data in $WORK/data, no access log, 2 threads, no grace period. The script appends its own
# sections (fill, buckets...).
originpull_config_head() {
  cat <<EOF
listen: 127.0.0.1:$OP_PORT
metrics_listen: 127.0.0.1:$METRICS_PORT
data_dir: $WORK/data
domain_suffix: bench.local
access_log: off
server: {threads: 2, grace_period_secs: 0, graceful_shutdown_timeout_secs: 1}
EOF
}

# start_nginx HTTP_LINES SERVER_BLOCK: one worker on loopback, logs and temp files in $WORK.
# Sets NGINX_BIN; stop_nginx stops it.
start_nginx() {
  need nginx nginx
  NGINX_BIN=$(command -v nginx)
  local user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  cat >"$WORK/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  $1
  client_body_temp_path $WORK/tmp-body; proxy_temp_path $WORK/tmp-proxy;
  fastcgi_temp_path $WORK/tmp-fcgi; uwsgi_temp_path $WORK/tmp-uwsgi; scgi_temp_path $WORK/tmp-scgi;
  $2
}
EOF
  "$NGINX_BIN" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
}

stop_nginx() {
  if [ -f "$WORK/nginx.pid" ]; then "$NGINX_BIN" -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; fi
}

# make_work NAME: a temp dir in $WORK for this run, removed on exit with the originpull process
# ($OP_PID, once set) and the nginx started here.
make_work() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/originpull-$1.XXXXXX")
  chmod 755 "$WORK"
  OP_PID=""
  trap cleanup_work EXIT
}

cleanup_work() {
  if [ -n "$OP_PID" ]; then kill "$OP_PID" 2>/dev/null || true; wait "$OP_PID" 2>/dev/null || true; fi
  stop_nginx
  rm -rf "$WORK"
}
