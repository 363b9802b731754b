#!/usr/bin/env python3
"""Helper for benches/side_by_side.sh and benches/https_side_by_side.sh (not meant to be run
by hand): the object sets, the script, the cold pass of the mirror scenario and the
idle-connection memory measurement.

  side_by_side_load.py objects ROOT PREFIX COUNT SIZE
      Write COUNT files of SIZE random bytes under ROOT, named as benches/wrk/summary.lua's
      object_path (PREFIX000/000000.bin, ...), and print their keys, one a line: the list
      `originpull prefetch` reads.

  side_by_side_load.py js
      Print 100 KB of JavaScript-like text (the compressed-hit scenarios' app.js).

  side_by_side_load.py cold URL HOST PREFIX COUNT SIZE CLIENTS
      Ask for each of the COUNT objects once, CLIENTS keep-alive connections at a time, each
      taking the next key not asked for yet. Every answer must be 200 with SIZE bytes. Prints
      one line "BENCH_RESULT ..." in the form of summary.lua's (wall time from the first
      request to the last answer).

  side_by_side_load.py idle HOST PORT PATH STATUS COUNT SETTLE PID...
      Open COUNT connections, send one GET PATH on each (keep-alive), read the whole answer
      (which must have status STATUS and a Content-Length) and leave them idle. Prints
      "before with closed" (KiB): the sum of VmRSS over PID... before, with the connections
      open, and after they were closed, each read SETTLE seconds after. Also used by
      benches/idle_connections.sh.
"""

import http.client
import os
import socket
import statistics
import sys
import threading
import time


def object_key(prefix, i):
    return f"{prefix}{i // 1000:03d}/{i:06d}.bin"


def cmd_objects(root, prefix, count, size):
    out = sys.stdout
    for i in range(count):
        key = object_key(prefix, i)
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        os.chmod(path, 0o644)
        out.write(key + "\n")


def cmd_js():
    lines = "".join(
        "function f%d(a, b) { return a * %d + b; } // %x\n" % (i, i, i * 2654435761 % 4294967296)
        for i in range(1800)
    )
    sys.stdout.write(lines[:102400])


def cmd_cold(url, host, prefix, count, size, clients):
    hostport = url.split("://", 1)[1].rstrip("/")
    next_key = iter(range(count))
    lock = threading.Lock()
    latencies, errors, nbytes = [], [], [0]

    def client():
        conn = http.client.HTTPConnection(hostport, timeout=60)
        while True:
            with lock:
                i = next(next_key, None)
            if i is None:
                break
            t0 = time.monotonic()
            try:
                conn.request("GET", "/" + object_key(prefix, i), headers={"Host": host})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{i}: {e!r}")
                conn.close()
                conn = http.client.HTTPConnection(hostport, timeout=60)
                continue
            t1 = time.monotonic()
            with lock:
                latencies.append(t1 - t0)
                nbytes[0] += len(body)
                if resp.status != 200 or len(body) != size:
                    errors.append(f"{i}: status {resp.status}, {len(body)} bytes")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - start
    for e in errors[:5]:
        print(f"cold: {e}", file=sys.stderr)
    lat = sorted(latencies) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"BENCH_RESULT rps={len(latencies) / secs:.3f} bps={nbytes[0] / secs:.3f} "
          f"p50_us={statistics.median(lat) * 1e6:.0f} p99_us={p99 * 1e6:.0f} "
          f"requests={len(latencies)} bytes={nbytes[0]} duration_us={secs * 1e6:.0f} "
          f"err_connect=0 err_read=0 err_write=0 err_status={len(errors)} err_timeout=0")


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cmd_idle(host, port, path, status, count, settle, pids):
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    expected = f"HTTP/1.1 {status} ".encode()

    def open_one():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("idle: connection closed before the answer's head")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("idle: connection closed before the answer's body")
            body += chunk
        if not head.startswith(expected):
            raise SystemExit(f"idle: {head[:60]!r}, expected {expected!r}")
        return s

    # Until the server answers, for 20 s.
    deadline = time.time() + 20
    while True:
        try:
            open_one().close()
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"idle: nothing answers on port {port}")
            time.sleep(0.1)
    # Warm-up: once-only allocations of each worker are not counted as the connections'.
    for _ in range(50):
        open_one().close()
    time.sleep(settle)
    before = rss_kib(pids)
    held = [open_one() for _ in range(count)]
    time.sleep(settle)
    with_them = rss_kib(pids)
    for s in held:
        s.close()
    time.sleep(settle)
    print(before, with_them, rss_kib(pids))


def main(argv):
    cmd, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if cmd == "objects" and len(args) == 4:
        cmd_objects(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "js" and not args:
        cmd_js()
    elif cmd == "cold" and len(args) == 6:
        cmd_cold(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5]))
    elif cmd == "idle" and len(args) >= 7:
        cmd_idle(args[0], int(args[1]), args[2], args[3], int(args[4]), float(args[5]), [int(p) for p in args[6:]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
