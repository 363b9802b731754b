#!/usr/bin/env bash
# Soak (issue #13), all on 127.0.0.1: DURATION seconds (600 by default) of mixed load (whole
# GETs, ranges, HEADs, keys the origin does not have) from WORKERS clients against originpull in
# front of an nginx origin that flaps (up FLAP_SECS, then stopped for FLAP_SECS, cutting copies
# in flight), with the config file rewritten every RELOAD_SECS (a real reload). Every answer is
# checked against the origin's files (benches/soak_load.py says what is correct). Then, with the
# origin up, every object is fetched once more and compared byte for byte.
#
# Prints requests by status, failed requests (target 0), objects stored whole / damaged (target
# 0 damaged) / not stored, and originpull's RSS at start, after the warm-up (the first tenth of
# the run: the memory tier and the pools fill) and at the end (target: end < warm-up + 10%,
# enforced from DURATION >= 120; shorter runs only report it). Exits non-zero when a target is
# missed.
#
# Usage: benches/soak.sh                 (DURATION=600)
#        DURATION=30 benches/soak.sh     (the version tests/soak.rs runs in CI)
# Needs nginx, curl and python3.
set -euo pipefail

DURATION=${DURATION:-600}
WORKERS=${WORKERS:-8}
FILES=${FILES:-200}
FLAP_SECS=${FLAP_SECS:-2}
RELOAD_SECS=${RELOAD_SECS:-10}
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=soak
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
need curl curl
need python3 python3
originpull_bin

make_work soak
FLAPPER_PID=""
RELOADER_PID=""
stop_helpers() {
  for pid in $FLAPPER_PID $RELOADER_PID; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  FLAPPER_PID=""; RELOADER_PID=""
}
trap 'stop_helpers; cleanup_work' EXIT

ORIGIN_PORT=$(free_port); OP_PORT=$(free_port); METRICS_PORT=$(free_port)
HOST=soak-1250000000.bench.local
mkdir -p "$WORK/www" "$WORK/data"
log "writing $FILES files (1 KiB - 4 MiB)"
python3 - "$WORK/www" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(13)
for i in range(n):
    roll = rng.random()
    size = (rng.randrange(1024, 64 * 1024) if roll < 0.6 else
            rng.randrange(64 * 1024, 1024 * 1024) if roll < 0.9 else
            rng.randrange(1024 * 1024, 4 * 1024 * 1024))
    with open(os.path.join(root, f"f{i:04d}.bin"), "wb") as f:
        f.write(os.urandom(size))
EOF
chmod -R a+rX "$WORK/www"

NGINX_HTTP="access_log off; sendfile on;"
NGINX_SERVER="server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; }"
start_nginx "$NGINX_HTTP" "$NGINX_SERVER"

write_config() {
  # $1: the negative TTL, alternated by the reloader so each rewrite is a real change.
  { originpull_config_head; cat <<EOF
memory_cache: {max_bytes: 67108864}
fill: {negative_ttl_secs: $1, breaker_secs: 2}
buckets:
  - name: soak-1250000000
    origin_pull: {enabled: true, origin: '127.0.0.1:$ORIGIN_PORT'}
EOF
  } >"$WORK/originpull.yaml.tmp"
  mv "$WORK/originpull.yaml.tmp" "$WORK/originpull.yaml"
}
write_config 1
RUST_LOG=warn "$OP_BIN" -c "$WORK/originpull.yaml" >>"$WORK/originpull.log" 2>&1 &
OP_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$OP_PORT/" && break; sleep 0.1; done
metrics() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics"; }
RSS_START=$(rss_kib "$OP_PID")

# The origin: up FLAP_SECS, down FLAP_SECS (nginx's fast stop cuts the copies in flight).
(
  while true; do
    sleep "$FLAP_SECS"; stop_nginx; sleep "$FLAP_SECS"; start_nginx "$NGINX_HTTP" "$NGINX_SERVER"
  done
) &
FLAPPER_PID=$!
# A reload every RELOAD_SECS.
(
  ttl=1
  while true; do sleep "$RELOAD_SECS"; ttl=$((3 - ttl)); write_config "$ttl"; done
) &
RELOADER_PID=$!

WARMUP=$(( DURATION / 10 )); [ "$WARMUP" -lt 3 ] && WARMUP=3
log "load for ${DURATION}s with $WORKERS clients (RSS after the warm-up at ${WARMUP}s)"
python3 "$REPO_ROOT/benches/soak_load.py" load --edge "127.0.0.1:$OP_PORT" --host "$HOST" \
  --origin "127.0.0.1:$ORIGIN_PORT" --root "$WORK/www" --seconds "$DURATION" \
  --workers "$WORKERS" >"$WORK/load.json" &
LOAD_PID=$!
sleep "$WARMUP"
RSS_WARM=$(rss_kib "$OP_PID"); RSS_PEAK=$RSS_WARM
while kill -0 "$LOAD_PID" 2>/dev/null; do
  r=$(rss_kib "$OP_PID"); [ "$r" -gt "$RSS_PEAK" ] && RSS_PEAK=$r
  sleep 1
done
wait "$LOAD_PID" || die "the load client failed"
RSS_END=$(rss_kib "$OP_PID")
stop_helpers
RELOADS=$(metrics | awk '/^originpull_config_reloads_total/ {s += $2} END {print s + 0}')
kill -0 "$OP_PID" 2>/dev/null || die "originpull is gone"

# The origin up for good; copies still running finish, then every object is checked.
[ -f "$WORK/nginx.pid" ] && kill -0 "$(cat "$WORK/nginx.pid")" 2>/dev/null || start_nginx "$NGINX_HTTP" "$NGINX_SERVER"
sleep 3
python3 "$REPO_ROOT/benches/soak_load.py" verify --edge "127.0.0.1:$OP_PORT" --host "$HOST" \
  --root "$WORK/www" >"$WORK/verify.json"

python3 - "$WORK/load.json" "$WORK/verify.json" "$DURATION" "$WORKERS" "$FILES" \
  "$RSS_START" "$RSS_WARM" "$RSS_PEAK" "$RSS_END" "$RELOADS" "$(nproc)" "$(uname -r)" <<'EOF'
import json, sys
load, verify = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
duration, workers, files = int(sys.argv[3]), sys.argv[4], sys.argv[5]
rss_start, rss_warm, rss_peak, rss_end = (int(x) / 1024 for x in sys.argv[6:10])
reloads, cores, kernel = sys.argv[10], sys.argv[11], sys.argv[12]
growth = (rss_end - rss_warm) / rss_warm * 100
enforce_rss = duration >= 120
print(f"## Soak: {duration} s, {workers} clients, {files} files, flapping origin, "
      f"reload every 10 s ({cores} cores, {kernel})")
print()
print("| metric | value | target |")
print("|---|---|---|")
print(f"| requests | {load['requests']} ({load['requests'] / duration:.0f}/s) | |")
for status, n in load["by_status"].items():
    print(f"| status {status} | {n} | |")
print(f"| failed requests | {load['failed']} | 0 |")
print(f"| reloads | {reloads} | |")
print(f"| objects stored whole | {verify['stored_whole']} | |")
print(f"| objects damaged | {verify['damaged']} | 0 |")
print(f"| objects not stored (302) | {verify['not_stored']} | |")
print(f"| RSS at start / after warm-up / peak / end (MiB) | {rss_start:.1f} / {rss_warm:.1f} / "
      f"{rss_peak:.1f} / {rss_end:.1f} | |")
print(f"| RSS growth, warm-up to end | {growth:+.1f}% | < 10%{'' if enforce_rss else ' (reported only under 120 s)'} |")
print()
print("by operation:", ", ".join(f"{k}: {v}" for k, v in load["by_op"].items()))
for line in load["failures"] + verify["problems"]:
    print("  problem:", line)
ok = load["failed"] == 0 and verify["damaged"] == 0 and (not enforce_rss or growth < 10)
sys.exit(0 if ok else 1)
EOF
