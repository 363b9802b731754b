#!/usr/bin/env python3
"""A proxy in front of the tests' S3 server (tests/s3_server.py), on 127.0.0.1, that plays a
store moto is not: one that fails, one that ignores conditional writes, Tencent COS's way of
refusing an overwrite, or one served over TLS by a private CA.

`s3_proxy.py UPSTREAM_PORT [--mode MODE] [--tls CERT_PEM KEY_PEM]` listens on a free port,
which it prints as `PORT <n>` on stdout once it listens, and forwards every request to
127.0.0.1:UPSTREAM_PORT. `PUT /_proxy/mode` with MODE as its body changes the mode:

- `pass`: forwards as is;
- `fail`: answers every request 503 SlowDown (a store behind a failing load balancer);
- `fail-parts`: answers 503 SlowDown to multipart part uploads only;
- `strip-conditional`: drops `If-None-Match`, `If-Match` and `x-cos-forbid-overwrite` (a store
  that ignores conditional writes);
- `cos`: as Tencent COS: ignores `If-None-Match` and `If-Match` on PUT, and refuses a PUT with
  `x-cos-forbid-overwrite: true` of an existing key with 409 FileAlreadyExists.

Requests are forwarded one connection each; bodies are read whole (the tests' objects are
small), and the upstream's own `Date` is kept (leases are judged by the store's clock).
"""
import http.client
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE_PATH = "/_proxy/mode"
MODES = {"pass", "fail", "fail-parts", "strip-conditional", "cos"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}
CONDITIONAL = {"if-none-match", "if-match", "x-cos-forbid-overwrite"}

state = {"mode": "pass", "upstream": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers, body, head=False):
        """Sends the answer; a HEAD keeps the upstream's Content-Length (the object's size)."""
        self.send_response_only(status)
        length = str(len(body))
        for name, value in headers:
            if name.lower() == "content-length":
                length = value if head else length
            elif name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def s3_error(self, status, code, message):
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>"
        ).encode()
        self.answer(status, [("Content-Type", "application/xml")], body, self.command == "HEAD")

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == MODE_PATH:
            mode = body.decode().strip()
            if mode not in MODES:
                self.s3_error(400, "BadMode", mode)
                return
            with lock:
                state["mode"] = mode
            self.answer(204, [], b"")
            return
        with lock:
            mode = state["mode"]
        is_part = self.command == "PUT" and "partNumber=" in self.path
        if mode == "fail" or (mode == "fail-parts" and is_part):
            self.s3_error(503, "SlowDown", "the proxy fails this request")
            return
        headers = [(n, v) for n, v in self.headers.items() if n.lower() not in HOP_BY_HOP]
        if mode == "strip-conditional":
            headers = [(n, v) for n, v in headers if n.lower() not in CONDITIONAL]
        cos_refusal = False
        if mode == "cos" and self.command == "PUT":
            forbid = any(
                n.lower() == "x-cos-forbid-overwrite" and v.strip().lower() == "true"
                for n, v in headers
            )
            headers = [(n, v) for n, v in headers if n.lower() not in CONDITIONAL]
            if forbid:
                headers.append(("If-None-Match", "*"))
                cos_refusal = True
        upstream = http.client.HTTPConnection("127.0.0.1", state["upstream"], timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() != "content-length":
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body if body else None)
            response = upstream.getresponse()
            answer = response.read()
            status = response.status
            if cos_refusal and status == 412:
                self.s3_error(409, "FileAlreadyExists", "the object already exists")
                return
            self.answer(status, response.getheaders(), answer, self.command == "HEAD")
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


def main():
    args = sys.argv[1:]
    state["upstream"] = int(args.pop(0))
    tls = None
    while args:
        flag = args.pop(0)
        if flag == "--mode":
            state["mode"] = args.pop(0)
        elif flag == "--tls":
            tls = (args.pop(0), args.pop(0))
        else:
            sys.exit(f"unknown argument {flag}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
