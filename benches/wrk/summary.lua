-- benches/side_by_side.sh: wrk's exact summary as one line the report parses. Used alone for
-- a fixed URL (wrk then sends one prepared request over and over), or loaded by the scripts
-- that pick a path per request.
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

-- Each thread's number (1, 2, ...), set before its init() runs.
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end

-- The path of stored object number i under prefix, as side_by_side_load.py names it.
function object_path(prefix, i)
  return string.format("/%s%03d/%06d.bin", prefix, math.floor(i / 1000), i)
end
