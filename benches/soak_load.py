#!/usr/bin/env python3
"""The soak test's client (see benches/soak.sh): mixed requests against originpull, each answer
checked against the origin's files, then a final check of every stored object.

  load:   soak_load.py load --edge HOST:PORT --host VHOST --origin HOST:PORT --root DIR
                            --seconds N [--workers N]
  verify: soak_load.py verify --edge HOST:PORT --host VHOST --root DIR

An answer is correct when it is one a user would accept for the request:
  GET     200 with the file's exact bytes, or 302 to http://<origin>/<key>
  Range   206 with exactly the asked bytes and the right Content-Range, or 302
  HEAD    200 with the file's size and MD5 ETag, or 302
  missing (a key the origin does not have) 302 to the origin
Anything else (another status, wrong bytes, a cut body, a reset, a timeout) is a failure.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import Counter

TIMEOUT_S = 30


def load_files(root):
    files = {}
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
        files[name] = (data, hashlib.md5(data).hexdigest())
    return files


class Worker(threading.Thread):
    def __init__(self, args, files, deadline, seed):
        super().__init__(daemon=True)
        self.args = args
        self.files = files
        self.keys = sorted(files)
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.counts = Counter()
        self.failures = []
        self.conn = None

    def connection(self):
        if self.conn is None:
            host, port = self.args.edge.rsplit(":", 1)
            self.conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        return self.conn

    def request(self, method, path, headers):
        conn = self.connection()
        try:
            conn.request(method, path, headers={"Host": self.args.host, **headers})
            resp = conn.getresponse()
            body = resp.read()
            if resp.getheader("connection", "").lower() == "close":
                self.drop()
            return resp, body
        except Exception:
            self.drop()
            raise

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def fail(self, op, path, why):
        self.counts[(op, "failed")] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{op} {path}: {why}")

    def redirect_ok(self, resp, key):
        return resp.getheader("location") == f"http://{self.args.origin}/{key}"

    def one(self):
        roll = self.rng.random()
        key = self.rng.choice(self.keys)
        data, md5 = self.files[key]
        path = "/" + key
        if roll < 0.50:
            op = "get"
            resp, body = self.request("GET", path, {})
            ok = (resp.status == 200 and body == data) or (
                resp.status == 302 and self.redirect_ok(resp, key))
        elif roll < 0.70:
            op = "range"
            start = self.rng.randrange(len(data))
            end = min(len(data) - 1, start + self.rng.randrange(1, 256 * 1024))
            resp, body = self.request("GET", path, {"Range": f"bytes={start}-{end}"})
            ok = (resp.status == 206 and body == data[start:end + 1]
                  and resp.getheader("content-range") == f"bytes {start}-{end}/{len(data)}") or (
                resp.status == 302 and self.redirect_ok(resp, key))
        elif roll < 0.85:
            op = "head"
            resp, body = self.request("HEAD", path, {})
            ok = (resp.status == 200 and resp.getheader("content-length") == str(len(data))
                  and resp.getheader("etag") == f'"{md5}"') or (
                resp.status == 302 and self.redirect_ok(resp, key))
        else:
            op = "missing"
            key = f"missing/{self.rng.randrange(1_000_000)}.bin"
            path = "/" + key
            resp, body = self.request("GET", path, {})
            ok = resp.status == 302 and self.redirect_ok(resp, key)
        self.counts[(op, resp.status)] += 1
        if not ok:
            self.fail(op, path, f"status {resp.status}, {len(body)} body bytes, "
                                f"location {resp.getheader('location')!r}")

    def run(self):
        while time.monotonic() < self.deadline:
            try:
                self.one()
            except Exception as e:  # a reset, a cut body, a timeout: all failures
                self.fail("request", "-", repr(e))


def load(args):
    files = load_files(args.root)
    deadline = time.monotonic() + args.seconds
    workers = [Worker(args, files, deadline, seed) for seed in range(args.workers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts = Counter()
    failures = []
    for w in workers:
        counts.update(w.counts)
        failures.extend(w.failures)
    by_status = Counter()
    failed = 0
    for (op, status), n in counts.items():
        if status == "failed":
            failed += n
        else:
            by_status[status] += n
    json.dump({
        "requests": sum(by_status.values()) + failed,
        "by_status": {str(k): v for k, v in sorted(by_status.items())},
        "by_op": {f"{op} {status}": n for (op, status), n in sorted(counts.items(), key=str)},
        "failed": failed,
        "failures": failures[:20],
    }, sys.stdout, indent=1)
    print()


def verify(args):
    files = load_files(args.root)
    host, port = args.edge.rsplit(":", 1)
    stored_whole = damaged = not_stored = 0
    problems = []
    for key, (data, _) in files.items():
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        try:
            conn.request("GET", "/" + key, headers={"Host": args.host})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and body == data:
                stored_whole += 1
            elif resp.status == 302:
                not_stored += 1
            else:
                damaged += 1
                problems.append(f"{key}: status {resp.status}, {len(body)} of {len(data)} bytes")
        except Exception as e:
            damaged += 1
            problems.append(f"{key}: {e!r}")
        finally:
            conn.close()
    json.dump({"stored_whole": stored_whole, "damaged": damaged, "not_stored": not_stored,
               "problems": problems[:20]}, sys.stdout, indent=1)
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("load", "verify"):
        p = sub.add_parser(name)
        p.add_argument("--edge", required=True)
        p.add_argument("--host", required=True)
        p.add_argument("--root", required=True)
        if name == "load":
            p.add_argument("--origin", required=True)
            p.add_argument("--seconds", type=float, required=True)
            p.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    load(args) if args.command == "load" else verify(args)


if __name__ == "__main__":
    main()
