#!/usr/bin/env python3
"""The S3 store tests' S3 side: moto's server, and a few boto3 client operations.

`s3_server.py serve [PORT]` runs moto's S3 server on 127.0.0.1, on PORT or a free port, which
it prints as `PORT <n>` on stdout once it listens. Every request runs under one global lock: moto checks a
conditional write's precondition and then writes without a lock, so concurrent
`If-None-Match: *` PUTs could all win; serialised, exactly one wins, as on AWS S3.

`s3_server.py ENDPOINT OP BUCKET [KEY [FILE] ...]` runs one client operation with boto3, as
"any other S3 tool" would: mb, put (KEY FILE CONTENT_TYPE), delete KEY, head KEY (prints
ContentType, ETag and Metadata as JSON), uploads (prints the count of multipart uploads in
progress), upload-keys (prints their keys, one a line), start-upload KEY (creates a multipart
upload and leaves it), keys (prints the keys, one a line). `s3_server.py ENDPOINT clock
SECONDS` sets the server's clock SECONDS (may be negative) away from this machine's: the
Last-Modified of objects written from then on and every response's Date follow it.
`s3_server.py ENDPOINT access-keys` prints the access key id each signed request named
(`Credential=` of its Authorization header, or of a presigned URL's query), one a line, in
order: moto accepts any key, so this is how a test sees which one a client used.
"""
import json
import sys
import threading

# Not an S3 path (no bucket may be named so): a PUT here sets the store's clock (see `serve`).
CLOCK_PATH = "/_clock"
# Not an S3 path either: a GET here lists the access key ids requests were signed with.
ACCESS_KEYS_PATH = "/_access_keys"


def serve(port):
    import datetime
    import email.utils
    import re
    import time

    import moto.s3.models
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    # The store's clock, `offset` seconds from this machine's: objects' Last-Modified and the
    # responses' Date both follow it, as they would on a store whose clock differs from a node's.
    clock = {"offset": 0.0}
    real_utcnow = moto.s3.models.utcnow
    moto.s3.models.utcnow = lambda: real_utcnow() + datetime.timedelta(seconds=clock["offset"])

    def date_time_string(self, timestamp=None):
        if timestamp is None:
            timestamp = time.time() + clock["offset"]
        return email.utils.formatdate(timestamp, usegmt=True)

    WSGIRequestHandler.date_time_string = date_time_string

    access_keys = []
    credential = re.compile(r"Credential=([^/,\s%]+)(?:/|%2F)", re.IGNORECASE)

    def serialised(environ, start_response):
        if environ.get("PATH_INFO") == ACCESS_KEYS_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return ["\n".join(access_keys).encode()]
        signed = credential.search(environ.get("HTTP_AUTHORIZATION", "")) or credential.search(
            environ.get("QUERY_STRING", "")
        )
        if signed:
            access_keys.append(signed.group(1))
        if environ.get("PATH_INFO") == CLOCK_PATH:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            clock["offset"] = float(environ["wsgi.input"].read(length))
            start_response("204 No Content", [])
            return []
        with lock:
            # The body is collected under the lock too: moto does its work while it is built.
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", port, serialised, threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


def client(endpoint, op, bucket, args):
    if op == "clock":
        import urllib.request

        request = urllib.request.Request(
            endpoint + CLOCK_PATH, data=bucket.encode(), method="PUT"
        )
        urllib.request.urlopen(request).close()
        return
    if op == "access-keys":
        import urllib.request

        with urllib.request.urlopen(endpoint + ACCESS_KEYS_PATH) as response:
            print(response.read().decode())
        return

    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if op == "mb":
        s3.create_bucket(Bucket=bucket)
    elif op == "put":
        key, path, content_type = args
        with open(path, "rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body.read(), ContentType=content_type)
    elif op == "delete":
        s3.delete_object(Bucket=bucket, Key=args[0])
    elif op == "head":
        head = s3.head_object(Bucket=bucket, Key=args[0])
        print(json.dumps({
            "ContentType": head.get("ContentType"),
            "ETag": head.get("ETag"),
            "CacheControl": head.get("CacheControl"),
            "ContentLength": head.get("ContentLength"),
            "Metadata": head.get("Metadata", {}),
        }))
    elif op == "uploads":
        print(len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])))
    elif op == "upload-keys":
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            print(upload["Key"])
    elif op == "start-upload":
        s3.create_multipart_upload(Bucket=bucket, Key=args[0])
    elif op == "keys":
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            print(item["Key"])
    else:
        sys.exit(f"unknown operation {op}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    else:
        client(sys.argv[1], sys.argv[2], (sys.argv[3:4] or [""])[0], sys.argv[4:])
