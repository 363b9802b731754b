#!/usr/bin/env bash
# HTTPS side by side (issue #22): originpull's HTTPS listener against nginx with the same
# certificate, and the bare Pingora TLS responder (examples/bare_pingora with CERT KEY) as the
# floor of our stack. Ratios come from one run on one machine.
#
# nginx: `ssl_protocols TLSv1.2 TLSv1.3`, `http2 on`, `ssl_session_cache shared:SSL:10m`,
# `keepalive_requests 1000000` (its default of 1000 ends h2load's connections mid-run),
# the same worker count as originpull's threads, access log off, sendfile and open_file_cache.
# Both keep as many files open (nginx open_file_cache max, originpull memory_cache.open_files:
# MANY + 1000), and nginx serves app.js.gz with gzip_static. originpull: the same objects
# stored in its bucket (`originpull prefetch` from a throw-away loopback origin over plain
# HTTP; the gzip variant made by a first request), access log off. The origin is then stopped:
# its closed port is where both servers send misses (nginx `return 302`).
#
# Scenarios (each server in turn, ROUNDS rounds, the median reported):
#   h2_4k       4 KiB hits over HTTP/2: h2load -c 16 -m 32                  -> req/s
#   h1_4k       4 KiB hits over HTTPS/1.1: wrk, keep-alive                   -> req/s, p99
#   handshakes  a new TLS connection per request: wrk -H 'Connection: close' -> req/s
#   h2_1m       1 MiB hits over HTTP/2: h2load -c 16 -m 4                    -> MiB/s
#   idle_tls    memory per idle TLS connection (IDLE connections, one request each) -> KiB
# And issue #23's loads over TLS (not the floor's: it answers one constant body):
#   h1_many     4 KiB hits over MANY objects, a random key per request: wrk, keep-alive
#               (benches/wrk/random_keys.lua; h2load walks one URI list in the same order on
#               every connection, so it has no random-key load)               -> req/s, p99
#   h1_302_distinct  a distinct missing key per request over HTTPS/1.1 -> 302
#               (benches/wrk/distinct_misses.lua)                             -> req/s, p99
#   h2_js_gzip  100 KB of JavaScript, Accept-Encoding: gzip, over HTTP/2: originpull's kept
#               gzip variant against gzip_static: h2load -c 16 -m 32          -> req/s
# Target: at least nginx's figure on each (KiB: at most nginx's).
#
# Usage:  benches/https_side_by_side.sh [--quick] [--help]
#   --quick            smoke run: ROUNDS=1 DURATION=2 IDLE=200 (checks the script, not a measurement)
# Environment knobs:
#   ROUNDS=3  DURATION=10 (seconds per run)  THREADS=2 (originpull threads = nginx workers)
#   IDLE=2000 (idle TLS connections)  BARE=1 (0: leave the bare Pingora floor out)
#   MANY=10000 (objects of h1_many; both servers keep them all open)
#   ORIGINPULL_BIN=, BARE_PINGORA_BIN=  prebuilt binaries (default: cargo build --release)
#   KEEP_WORK=0  1: keep the work dir
#
# Everything listens on 127.0.0.1; load generators and servers share the machine's cores.
# Needs h2load (Debian nghttp2-client), wrk, nginx, openssl, python3: missing ones are
# installed from Debian.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=1; DURATION=2; IDLE=200 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "https_side_by_side.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
IDLE=${IDLE:-2000}
MANY=${MANY:-10000}
BARE=${BARE:-1}
KEEP_WORK=${KEEP_WORK:-0}
for knob in ROUNDS DURATION THREADS IDLE MANY; do
  [[ ${!knob} =~ ^[0-9]+$ ]] && [ "${!knob}" -ge 1 ] || { echo "$knob must be >= 1" >&2; exit 2; }
done

BENCH=https_side_by_side
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=benches/lib.sh
. "$SCRIPT_DIR/lib.sh"
need h2load nghttp2-client
need wrk wrk
need openssl openssl
need nginx nginx
ulimit -n "$(ulimit -Hn)"

make_work https
BARE_PID=""
ORIGIN_PID=""
stop_bare() { if [ -n "$BARE_PID" ]; then kill "$BARE_PID" 2>/dev/null || true; wait "$BARE_PID" 2>/dev/null || true; BARE_PID=""; fi; }
finish() {
  stop_bare
  [ -n "$ORIGIN_PID" ] && kill "$ORIGIN_PID" 2>/dev/null
  if [ "$KEEP_WORK" = 1 ]; then
    stop_nginx; [ -n "$OP_PID" ] && kill "$OP_PID" 2>/dev/null; log "work dir kept: $WORK"
  else
    cleanup_work
  fi
}
trap finish EXIT

BUCKET=bench-1250000000
HOST=$BUCKET.bench.local

# ------------------------------------------------------------- certificate and objects
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
  -keyout "$WORK/edge.key" -out "$WORK/edge.pem" 2>/dev/null
chmod 600 "$WORK/edge.key"
mkdir -p "$WORK/root" "$WORK/data"
head -c 4096 /dev/urandom >"$WORK/root/obj4k"
head -c 1048576 /dev/urandom >"$WORK/root/obj1m"
python3 "$SCRIPT_DIR/side_by_side_load.py" js >"$WORK/root/app.js"
gzip -9 -k -n "$WORK/root/app.js"
python3 "$SCRIPT_DIR/side_by_side_load.py" objects "$WORK/root" o/ "$MANY" 4096 >"$WORK/keys.txt"
printf '%s\n' obj4k obj1m app.js >>"$WORK/keys.txt"
echo bench-token >"$WORK/admin.token"; chmod 600 "$WORK/admin.token"

originpull_bin
if [ "$BARE" = 1 ]; then
  if [ -n "${BARE_PINGORA_BIN:-}" ]; then BARE_BIN=$BARE_PINGORA_BIN; else
    (cd "$REPO_ROOT" && cargo build --release -q --example bare_pingora)
    BARE_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/bare_pingora"
  fi
fi

# ------------------------------------------------------------- servers
OP_PORT=$(free_port); METRICS_PORT=$(free_port); OP_TLS=$(free_port); ADMIN_PORT=$(free_port)
NGINX_TLS=$(free_port); BARE_TLS=$(free_port); ORIGIN_PORT=$(free_port)

python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$WORK/root" >/dev/null 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/obj4k" && break; sleep 0.1; done
{
  originpull_config_head
  cat <<EOF
admin_listen: 127.0.0.1:$ADMIN_PORT
admin_token_file: $WORK/admin.token
memory_cache: {open_files: $((MANY + 1000))}
https:
  listen: 127.0.0.1:$OP_TLS
  certificates:
    - cert_file: $WORK/edge.pem
      key_file: $WORK/edge.key
buckets:
  - name: $BUCKET
    origin_pull: {enabled: true, origin: "127.0.0.1:$ORIGIN_PORT"}
EOF
} | sed "s/server: {threads: 2,/server: {threads: $THREADS, max_connections: $((IDLE + 1000)),/" >"$WORK/originpull.yaml"
"$OP_BIN" -c "$WORK/originpull.yaml" 2>"$WORK/originpull.log" &
OP_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && break; sleep 0.1; done
log "copying $(wc -l <"$WORK/keys.txt") objects into originpull (originpull prefetch)"
"$OP_BIN" prefetch --admin "http://127.0.0.1:$ADMIN_PORT" --token-file "$WORK/admin.token" \
  --bucket "$BUCKET" "$WORK/keys.txt" 2>"$WORK/prefetch.log" || die "prefetch failed: $(tail -n 3 "$WORK/prefetch.log")"
# The gzip variant is made in the background after the first request that asks for it.
for _ in $(seq 100); do
  curl -s -o /dev/null -D - -H "Host: $HOST" -H 'Accept-Encoding: gzip' "http://127.0.0.1:$OP_PORT/app.js" |
    grep -qi '^content-encoding: gzip' && break
  sleep 0.1
done
kill "$ORIGIN_PID"; wait "$ORIGIN_PID" 2>/dev/null || true; ORIGIN_PID=""
for obj in obj4k obj1m app.js o/000/000000.bin; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/edge.pem" --resolve "$HOST:$OP_TLS:127.0.0.1" "https://$HOST:$OP_TLS/$obj")
  [ "$code" = 200 ] || die "originpull does not serve $obj over HTTPS ($code)"
done

# `http2 on` arrived in nginx 1.25.1; older ones take it on the listen line.
if nginx -V 2>&1 | awk -F/ '/nginx version/ {split($2, v, "."); exit !(v[1] > 1 || v[2] > 25 || (v[2] == 25 && v[3] >= 1))}'; then
  H2_LISTEN=""; H2_ON="http2 on;"
else
  H2_LISTEN=" http2"; H2_ON=""
fi
start_nginx "sendfile on; tcp_nopush on; access_log off; keepalive_requests 1000000;
  open_file_cache max=$((MANY + 1000)) inactive=60s; open_file_cache_valid 60s; open_file_cache_errors on;
  gzip_static on; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_timeout 10m;" \
  "server { listen 127.0.0.1:$NGINX_TLS ssl$H2_LISTEN; $H2_ON server_name $HOST;
    ssl_certificate $WORK/edge.pem; ssl_certificate_key $WORK/edge.key; root $WORK/root;
    location / { try_files \$uri @origin; }
    location @origin { return 302 http://127.0.0.1:$ORIGIN_PORT\$request_uri; } }"
sed -i "s/^worker_processes 1;/worker_processes $THREADS;/" "$WORK/nginx.conf"
"$NGINX_BIN" -p "$WORK" -c "$WORK/nginx.conf" -s reload 2>/dev/null || true
for _ in $(seq 50); do curl -sk -o /dev/null "https://127.0.0.1:$NGINX_TLS/obj4k" && break; sleep 0.1; done

# Both answer the compressed script with gzip, and a missing key with a 302.
for port in "$OP_TLS" "$NGINX_TLS"; do
  curl -s -o /dev/null -D - --cacert "$WORK/edge.pem" --resolve "$HOST:$port:127.0.0.1" \
    -H 'Accept-Encoding: gzip' "https://$HOST:$port/app.js" | grep -qi '^content-encoding: gzip' ||
    die "the server on port $port does not answer app.js with gzip"
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/edge.pem" --resolve "$HOST:$port:127.0.0.1" "https://$HOST:$port/no/such/key")
  [ "$code" = 302 ] || die "the server on port $port answers a missing key with $code, not 302"
done

start_bare() { # MODE
  stop_bare
  "$BARE_BIN" "$1" "127.0.0.1:$BARE_TLS" "$THREADS" "$WORK/edge.pem" "$WORK/edge.key" 2>"$WORK/bare.log" &
  BARE_PID=$!
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$BARE_TLS/" && return; sleep 0.1; done
  die "bare_pingora did not start"
}

# ------------------------------------------------------------- load
port_of() { case "$1" in originpull) echo "$OP_TLS" ;; nginx) echo "$NGINX_TLS" ;; bare) echo "$BARE_TLS" ;; esac; }

h2load_rps() { # SERVER PATH STREAMS [HEADER] -> "req/s MiB/s", or FAILED (why on stderr)
  local port out; port=$(port_of "$1")
  local extra=()
  [ -n "${4:-}" ] && extra=(-H "$4")
  out=$(h2load -c 16 -m "$3" -t 2 -D "$DURATION" --warm-up-time=1 --connect-to="127.0.0.1:$port" \
    "${extra[@]}" "https://$HOST:$port$2" 2>&1) || true
  printf '%s\n' "$out" >>"$WORK/h2load.log"
  # finished in 2.00s, 12345.50 req/s, 50.23MB/s
  # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
  printf '%s\n' "$out" | awk '
    /^finished in/ { rps=$4; rate=$6 }
    /^requests:/ { done=$8; bad=$10+$12 }
    END {
      mib=rate; sub(/[A-Za-z\/]+$/, "", mib)
      if (rate ~ /KB\/s$/) mib/=1024; else if (rate ~ /GB\/s$/) mib*=1024; else if (rate !~ /MB\/s$/) mib/=1048576
      if (bad > 0 || done == 0) print "FAILED"; else printf "%s %.1f\n", rps, mib }'
  if ! printf '%s\n' "$out" | grep -q ' 0 failed, 0 errored'; then
    log "h2load against $1 $2: $(printf '%s\n' "$out" | grep -E '^(requests|status codes)|[Ee]rror|No protocol' | head -3 | tr '\n' ' ')"
  fi
}

wrk_rps() { # SERVER PATH [EXTRA_HEADER [SCRIPT SCRIPT_ARG...]] -> "req/s p99_ms"
  local port path=$2; port=$(port_of "$1")
  local extra=() script=()
  [ -n "${3:-}" ] && extra=(-H "$3")
  if [ -n "${4:-}" ]; then
    script=(-s "$SCRIPT_DIR/wrk/$4")
    shift 4
    script+=("https://127.0.0.1:$port$path" -- "$@")
  else
    script=("https://127.0.0.1:$port$path")
  fi
  wrk -t 2 -c 64 -d "${DURATION}s" --latency -H "Host: $HOST" "${extra[@]}" "${script[@]}" 2>&1 |
    tee -a "$WORK/wrk.log" | awk '
      /Requests\/sec/ { rps=$2 }
      / 99%/ { v=$2; ms=v+0; if (v ~ /us$/) ms=v/1000; else if (v ~ /[^m]s$/) ms=v*1000; p99=ms }
      /Non-2xx|Socket errors: connect [1-9]/ { bad=1 }
      END { if (bad) print "FAILED"; else printf "%s %.2f\n", rps, p99 }'
}

idle_kib() { # PID-LIST PORT -> KiB per idle TLS connection
  local pids=$1 port=$2
  IDLE=$IDLE PIDS="$pids" PORT=$port HOST=$HOST python3 - <<'EOF'
import os, socket, ssl, time
pids = [int(p) for p in os.environ["PIDS"].split()]
port, n, host = int(os.environ["PORT"]), int(os.environ["IDLE"]), os.environ["HOST"]
def rss():
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return total
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
time.sleep(1); before = rss(); conns = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=host)
    s.sendall(f"GET /obj4k HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    got = b""
    while len(got) < 4096 or b"\r\n\r\n" not in got:
        got += s.recv(65536)
    conns.append(s)
time.sleep(2); after = rss()
print(f"{(after - before) / n:.1f}")
EOF
}

# The master and its workers.
nginx_pids() { local master; master=$(cat "$WORK/nginx.pid"); echo "$master $(pgrep -P "$master" | tr '\n' ' ')"; }

declare -A RESULTS
record() { RESULTS["$1|$2"]+="$3;"; log "$1 $2: $3"; }

for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS"
  for server in originpull nginx bare; do
    [ "$server" = bare ] && [ "$BARE" != 1 ] && continue
    [ "$server" = bare ] && start_bare 4k
    record h2_4k "$server" "$(h2load_rps "$server" /obj4k 32)"
    record h1_4k "$server" "$(wrk_rps "$server" /obj4k)"
    record handshakes "$server" "$(wrk_rps "$server" /obj4k 'Connection: close')"
    [ "$server" = bare ] && start_bare 1m
    record h2_1m "$server" "$(h2load_rps "$server" /obj1m 4)"
    [ "$server" = bare ] && continue
    record h1_many "$server" "$(wrk_rps "$server" / "" random_keys.lua o/ "$MANY")"
    record h1_302_distinct "$server" "$(wrk_rps "$server" / "" distinct_misses.lua "$server$round")"
    record h2_js_gzip "$server" "$(h2load_rps "$server" /app.js 32 'accept-encoding: gzip')"
  done
done
stop_bare
record idle_tls originpull "$(idle_kib "$OP_PID" "$OP_TLS")"
record idle_tls nginx "$(idle_kib "$(nginx_pids)" "$NGINX_TLS")"

# ------------------------------------------------------------- report
median() { tr ';' '\n' | awk 'NF' | awk '{print $1}' | sort -n | awk '{a[NR]=$1} END { if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
echo "# HTTPS side by side, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, THREADS=$THREADS ROUNDS=$ROUNDS DURATION=${DURATION}s"
echo
echo "| scenario | originpull | nginx | bare Pingora | originpull / nginx |"
echo "|---|---|---|---|---|"
for scenario in h2_4k h1_4k handshakes h2_1m h1_many h1_302_distinct h2_js_gzip idle_tls; do
  column=1; unit="req/s"
  # h2load prints its byte rate with three digits (1.00GB/s); the objects are 1 MiB, so its
  # req/s is the MiB/s, exactly.
  [ "$scenario" = h2_1m ] && unit="MiB/s"
  [ "$scenario" = idle_tls ] && unit="KiB/conn"
  values=()
  for server in originpull nginx bare; do
    raw=${RESULTS["$scenario|$server"]:-}
    if [[ $raw == *FAILED* ]]; then values+=("FAILED"); continue; fi
    values+=("$(printf '%s' "$raw" | tr ';' '\n' | awk -v c="$column" 'NF {print $c}' | median)")
  done
  ratio=$(awk -v a="${values[0]}" -v b="${values[1]}" 'BEGIN { if (b+0 > 0 && a+0 > 0) printf "%.2f", a/b; else print "-" }')
  echo "| $scenario ($unit) | ${values[0]} | ${values[1]} | ${values[2]} | $ratio |"
done
