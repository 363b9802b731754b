#!/usr/bin/env bash
# CPU time a running server spends per request, split into user and system time: the figure
# that separates two servers' own work when the load generator shares their cores (req/s on
# this 2-core VM moves by 10-15% between runs; CPU per request by much less).
#
# Usage:  benches/cpu_per_request.sh PID URL [HOST] [ROUNDS]
#   PID     the server process (all its threads are counted, from /proc/PID/stat)
#   URL     what wrk asks for, e.g. http://127.0.0.1:8080/obj4k
#   HOST    Host header (default: the URL's)
#   ROUNDS  wrk runs (default 3), each DURATION seconds (default 5), THREADS (2) and
#           CONNECTIONS (64) as in benches/side_by_side.sh
#
# SCRIPT=FILE runs wrk with that Lua script (e.g. benches/wrk/distinct_misses.lua, given a tag
# unique to each round, or SCRIPT_ARGS, e.g. "h/ 20000" for benches/wrk/random_keys.lua).
#
# Output: one line per round: req/s, user µs/request, system µs/request.
# To compare two servers, alternate calls (A, B, A, B...) and compare medians.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2; }
PID=$1 URL=$2 HOST=${3:-} ROUNDS=${4:-3}
DURATION=${DURATION:-5} THREADS=${THREADS:-2} CONNECTIONS=${CONNECTIONS:-64}
command -v wrk >/dev/null || { echo "cpu_per_request.sh: wrk is not installed" >&2; exit 1; }
[ -r "/proc/$PID/stat" ] || { echo "cpu_per_request.sh: no process $PID" >&2; exit 1; }
ticks=$(getconf CLK_TCK)
host_args=()
[ -n "$HOST" ] && host_args=(-H "Host: $HOST")
# utime and stime are fields 14 and 15; the command name (field 2) has no spaces here.
cpu() { awk '{print $14, $15}' "/proc/$PID/stat"; }
for _ in $(seq "$ROUNDS"); do
  read -r user0 sys0 < <(cpu)
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "${host_args[@]}" \
    ${SCRIPT:+-s "$SCRIPT"} "$URL" ${SCRIPT:+-- ${SCRIPT_ARGS:-"r$$-$RANDOM"}})
  read -r user1 sys1 < <(cpu)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  awk -v r="$requests" -v rate="$rate" -v t="$ticks" -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) \
    'BEGIN { printf "req/s %9.0f   user %5.2f us/req   sys %5.2f us/req\n", rate, u / t / r * 1e6, s / t / r * 1e6 }'
done
