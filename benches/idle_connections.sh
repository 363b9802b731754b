#!/usr/bin/env bash
# Memory per idle keep-alive connection.
#
# Starts originpull (release build) on a free loopback port with one bucket
# (origin-pull off, access log off), opens N connections, sends one GET on
# each (answered 404 NoSuchKey, keep-alive) and leaves them idle. VmRSS is read
# from /proc/PID/status before and after; the difference over N is printed in
# KiB per idle connection, and what is still held once they are closed.
#
# Usage:  benches/idle_connections.sh [--help]
# Environment knobs:
#   CONNECTIONS=2000   idle connections to open
#   SETTLE=2           seconds to wait before each RSS reading
#   ORIGINPULL_BIN=    path of a prebuilt originpull binary to use instead of
#                      building with `cargo build --release` (default: build)
#
# Output (stdout): RSS before and after, and KiB per idle connection.
# Needs python3, and an open-files limit above CONNECTIONS (raised to the hard
# limit here).
set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  "") ;;
  *) echo "idle_connections.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

CONNECTIONS=${CONNECTIONS:-2000}
SETTLE=${SETTLE:-2}
ORIGINPULL_BIN=${ORIGINPULL_BIN:-}
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && [ "$CONNECTIONS" -ge 1 ] || { echo "CONNECTIONS must be >= 1" >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
if [ -z "$ORIGINPULL_BIN" ]; then
  (cd "$REPO_ROOT" && cargo build --release >&2)
  ORIGINPULL_BIN="$REPO_ROOT/target/release/originpull"
fi
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
PID=""
cleanup() {
  [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/data"
cat >"$WORK/originpull.yaml" <<EOF
listen: 127.0.0.1:$PORT
data_dir: $WORK/data
domain_suffix: file.myqcloud.com
access_log: "off"
server:
  threads: 2
  max_connections: $((CONNECTIONS + 100))
  pid_file: $WORK/originpull.pid
  upgrade_sock: $WORK/upgrade.sock
buckets:
  - name: example-1250000000
    origin_pull:
      enabled: false
EOF

"$ORIGINPULL_BIN" -c "$WORK/originpull.yaml" 2>"$WORK/stderr.log" &
PID=$!

res=$(python3 "$SCRIPT_DIR/side_by_side_load.py" idle \
  example-1250000000.file.myqcloud.com "$PORT" /missing.txt 404 "$CONNECTIONS" "$SETTLE" "$PID")
read -r before after closed <<<"$res"
echo "idle connections:   $CONNECTIONS"
echo "RSS before:         $before KiB"
echo "RSS after:          $after KiB"
awk -v a="$after" -v b="$before" -v n="$CONNECTIONS" 'BEGIN { printf "per idle connection: %.1f KiB\n", (a - b) / n }'
awk -v c="$closed" -v b="$before" -v n="$CONNECTIONS" \
  'BEGIN { printf "RSS after closing:  %d KiB (%.1f KiB per connection kept)\n", c, (c - b) / n }'
