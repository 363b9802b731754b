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

CONNECTIONS=$CONNECTIONS SETTLE=$SETTLE PORT=$PORT PID=$PID python3 - <<'EOF'
import os, socket, time

port, pid = int(os.environ["PORT"]), int(os.environ["PID"])
n, settle = int(os.environ["CONNECTIONS"]), float(os.environ["SETTLE"])
request = (b"GET /missing.txt HTTP/1.1\r\n"
           b"Host: example-1250000000.file.myqcloud.com\r\n\r\n")

def rss_kib():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")

def open_one():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    data = b""
    while b"</Error>\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("connection closed before the answer")
        data += chunk
    assert data.startswith(b"HTTP/1.1 404"), data[:80]
    return s

deadline = time.time() + 20
while True:
    try:
        open_one().close()
        break
    except OSError:
        if time.time() > deadline:
            raise SystemExit("originpull did not start")
        time.sleep(0.1)

# Warm-up: the first requests on each worker allocate once-only state.
for _ in range(50):
    open_one().close()
time.sleep(settle)
before = rss_kib()
held = [open_one() for _ in range(n)]
time.sleep(settle)
after = rss_kib()
print(f"idle connections:   {n}")
print(f"RSS before:         {before} KiB")
print(f"RSS after:          {after} KiB")
print(f"per idle connection: {(after - before) / n:.1f} KiB")
for s in held:
    s.close()
time.sleep(settle)
closed = rss_kib()
print(f"RSS after closing:  {closed} KiB ({(closed - before) / n:.1f} KiB per connection kept)")
EOF
