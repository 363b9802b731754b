#!/usr/bin/env bash
# Hit throughput of the S3 store backend against the disk backend, on loopback.
#
# One 64 KiB object (SIZE) is served by three originpull processes in turn:
#   disk       the disk backend (object copied in from a throw-away python origin)
#   s3-memory  the S3 backend with the memory tier on (default memory_cache): hits from memory
#              after a HEAD every revalidate_secs
#   s3-local   the S3 backend with the memory tier off and store.local_tier on: hits from the
#              node's disk copy (one HEAD every revalidate_secs, 30 s)
#   s3-store   the S3 backend with the memory tier off: every hit is a HEAD plus a ranged GET
#              to the store (moto's server via tests/s3_server.py, one request at a time)
# and wrk reports req/s and p99 for each. moto is a Python test server serialised by a global
# lock: the s3-store figure is moto's limit, not a real store's; it shows the shape (two store
# requests per uncached hit), not S3's capacity.
#
# Usage:  benches/s3_hits.sh            (needs wrk and .ci/setup's moto venv)
# Environment: DURATION=10 CONNECTIONS=16 SIZE=65536 ORIGINPULL_BIN= (default: cargo build)
#              ORIGINPULL_MOTO_VENV= (default ~/.local/share/originpull/moto-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
SIZE=${SIZE:-65536}
VENV=${ORIGINPULL_MOTO_VENV:-$HOME/.local/share/originpull/moto-venv}
PY="$VENV/bin/python"
BUCKET=example-1250000000
HOST="$BUCKET.file.myqcloud.com"
command -v wrk >/dev/null || { echo "s3_hits.sh: wrk is needed" >&2; exit 2; }
[ -x "$PY" ] || { echo "s3_hits.sh: moto venv missing ($PY); run .ci/setup" >&2; exit 2; }
if [ -z "${ORIGINPULL_BIN:-}" ]; then
  cargo build --release >&2
  ORIGINPULL_BIN=target/release/originpull
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

head -c "$SIZE" /dev/urandom > "$WORK/obj"
mkdir -p "$WORK/www" && cp "$WORK/obj" "$WORK/www/obj"
ORIGIN_PORT=$(free_port)
(cd "$WORK/www" && exec python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null) &
PIDS+=($!)

"$PY" tests/s3_server.py serve > "$WORK/moto.port" 2>/dev/null < /dev/null &
PIDS+=($!)
for _ in $(seq 100); do grep -q PORT "$WORK/moto.port" 2>/dev/null && break; sleep 0.1; done
S3="http://127.0.0.1:$(awk '{print $2}' "$WORK/moto.port")"
"$PY" tests/s3_server.py "$S3" mb "$BUCKET"
"$PY" tests/s3_server.py "$S3" put "$BUCKET" obj "$WORK/obj" application/octet-stream
printf '[default]\naws_access_key_id = bench\naws_secret_access_key = bench\n' > "$WORK/credentials"

# start NAME EXTRA_YAML: runs originpull; sets PORT once it answers.
start() {
  local name=$1 extra=$2 port
  port=$(free_port)
  mkdir -p "$WORK/$name/data"
  cat > "$WORK/$name/originpull.yaml" <<EOF
listen: 127.0.0.1:$port
data_dir: $WORK/$name/data
domain_suffix: file.myqcloud.com
access_log: off
server: {threads: 2, pid_file: $WORK/$name/pid, upgrade_sock: $WORK/$name/upgrade.sock}
$extra
buckets:
  - name: $BUCKET
    origin_pull: {enabled: true, origin: "127.0.0.1:$ORIGIN_PORT"}
EOF
  "$ORIGINPULL_BIN" -c "$WORK/$name/originpull.yaml" > /dev/null 2> "$WORK/$name/stderr" &
  PIDS+=($!)
  for _ in $(seq 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$port/obj" || true)
    [ "$code" = 200 ] && { PORT=$port; return; }
    sleep 0.1
  done
  echo "s3_hits.sh: $name never served /obj; stderr:" >&2; cat "$WORK/$name/stderr" >&2; exit 1
}

STORE="store: {backend: s3, s3: {endpoint: \"$S3\", region: us-east-1, path_style: true, credentials_file: $WORK/credentials}}"
STORE_BLOCK="store:
  backend: s3
  s3: {endpoint: \"$S3\", region: us-east-1, path_style: true, credentials_file: $WORK/credentials}"
echo "machine: $(nproc) cores, $(uname -sr); object $SIZE bytes; wrk -t2 -c$CONNECTIONS -d${DURATION}s"
echo
echo "| backend | req/s | p99 |"
echo "|---|---|---|"
LOCAL="  local_tier: {dir: $WORK/local, max_bytes: 1073741824, revalidate_secs: 30}"
for run in "disk|" "s3-memory|$STORE" "s3-local|$STORE_BLOCK
$LOCAL
memory_cache: {max_bytes: 0}" "s3-store|$STORE
memory_cache: {max_bytes: 0}"; do
  name=${run%%|*}
  start "$name" "${run#*|}"
  sleep 1  # the local tier copies the object in the background after its first read
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $HOST" "http://127.0.0.1:$PORT/obj")
  if echo "$out" | grep -q "Non-2xx"; then echo "s3_hits.sh: $name: error responses" >&2; echo "$out" >&2; fi
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "| $name | $rps | $p99 |"
done
