#!/usr/bin/env bash
# Migrating a whole site with `originpull prefetch`, as the README shows it:
#   find SITE -type f -printf '%P\n' | originpull prefetch ... -
# A throw-away site of FILES files of SIZE bytes is served by a loopback origin
# (python3 -m http.server); originpull copies every file through its admin API.
# Prints: the prefetch's wall time and objects/s, a second run's wall time
# (nothing left to copy), and how long the background count takes after a
# restart (the time until GET /v1/buckets/{bucket}/progress says count_complete).
#
# Everything listens on 127.0.0.1 only; origin, server and client share the
# machine's cores, so the figures are for this box, not absolute capacity.
#
# Usage: benches/prefetch_site.sh
# Environment: FILES=10000 SIZE=4096 PER_ORIGIN=8 (fill.per_origin_concurrency)
#        ORIGINPULL_BIN=path (default: cargo build --release, target/release/originpull)
set -euo pipefail

FILES=${FILES:-10000}
SIZE=${SIZE:-4096}
PER_ORIGIN=${PER_ORIGIN:-8}
cd "$(dirname "$0")/.."
if [[ -z "${ORIGINPULL_BIN:-}" ]]; then
    cargo build --release >&2
    ORIGINPULL_BIN=target/release/originpull
fi
BIN=$(realpath "$ORIGINPULL_BIN")
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN_PORT=$(free_port); LISTEN_PORT=$(free_port); ADMIN_PORT=$(free_port)

mkdir -p "$WORK/site"
python3 - "$WORK/site" "$FILES" "$SIZE" <<'EOF'
import os, sys
root, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(files):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(size))
EOF
(cd "$WORK/site" && exec python3 -m http.server --bind 127.0.0.1 "$ORIGIN_PORT" >/dev/null 2>&1) &
PIDS+=($!)
until curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/"; do sleep 0.05; done

umask 077
echo "bench-token" > "$WORK/admin.token"
cat > "$WORK/originpull.yaml" <<EOF
listen: 127.0.0.1:$LISTEN_PORT
admin_listen: 127.0.0.1:$ADMIN_PORT
admin_token_file: $WORK/admin.token
data_dir: $WORK/data
domain_suffix: file.myqcloud.com
access_log: "off"
fill:
  per_origin_concurrency: $PER_ORIGIN
buckets:
  - name: site-1250000000
    origin_pull:
      enabled: true
      origin: 127.0.0.1:$ORIGIN_PORT
EOF
start_server() {
    "$BIN" -c "$WORK/originpull.yaml" 2>>"$WORK/server.log" &
    SERVER=$!
    PIDS+=("$SERVER")
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/" && return
        sleep 0.1
    done
    echo "originpull did not start" >&2; exit 1
}
prefetch() {
    find "$WORK/site" -type f -printf '%P\n' | "$BIN" prefetch --admin "http://127.0.0.1:$ADMIN_PORT" \
        --token-file "$WORK/admin.token" --bucket site-1250000000 - 2>"$WORK/prefetch.log" \
        || { echo "prefetch exited $?:" >&2; grep -v '^failed' "$WORK/prefetch.log" | tail -3 >&2;
             grep '^failed' "$WORK/prefetch.log" | head -3 >&2; }
}
now() { date +%s.%N; }

start_server
t0=$(now); prefetch; t1=$(now)
tail -1 "$WORK/prefetch.log" >&2
first=$(echo "$t1 - $t0" | bc)
t0=$(now); prefetch; t1=$(now)
second=$(echo "$t1 - $t0" | bc)

kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
t0=$(now); start_server
until curl -s -H 'Authorization: Bearer bench-token' \
    "http://127.0.0.1:$ADMIN_PORT/v1/buckets/site-1250000000/progress" | grep -q '"count_complete": true'; do
    sleep 0.05
done
t1=$(now)
count=$(echo "$t1 - $t0" | bc)
objects=$(curl -s -H 'Authorization: Bearer bench-token' \
    "http://127.0.0.1:$ADMIN_PORT/v1/buckets/site-1250000000/progress" | grep '"objects"')

echo "files=$FILES size=$SIZE per_origin_concurrency=$PER_ORIGIN"
printf 'prefetch: %.2f s (%.0f objects/s)\n' "$first" "$(echo "$FILES / $first" | bc -l)"
printf 'second run (nothing to copy): %.2f s\n' "$second"
printf 'restart until count_complete: %.2f s (%s)\n' "$count" "$(echo "$objects" | tr -d ' ,')"
