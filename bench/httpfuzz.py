"""Raw HTTP fuzz cases for the agent's API, and a sender that reports what came back.

Deterministic for a seed: well-formed requests with and without the bearer token, requests
assembled from hostile parts, byte-level mutations of a good request, random bytes and
header floods. Used by the HTTP fuzz scenario in ``bench/faults.py``.
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"post", b"G\x00T", b"X" * 300]
PATHS = [b"/predict", b"/metrics", b"/healthz", b"/readyz", b"/openapi.json", b"/", b"*", b"/../../etc/passwd",
         b"/predict?x=1", b"/%00", b"/\xff\xfe", b"http://h/predict", b"/" + b"a" * 8000]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\x00", b"", b"HTTP/1.1 extra"]
BODIES = [b'{"value": 0.95}', b'{"value": NaN}', b'{"value": 1e999}', b'{"value": "0.9"}', b'{"values": {}}',
          b'{"value": 0.9, "sensor_id": 7}', b"[" * 3000, b'{"value": 1' + b"0" * 5000 + b"}", b"\xff\xfe",
          b"", b"null", b'{"values": {"a": 1, "b": true}}', b'{"value": 0.9, "values": {"value": 1}}']
HEADERS = [b"Content-Type: application/json", b"Content-Type: text/plain", b"Content-Type: application/json; charset=latin-1",
           b"Transfer-Encoding: chunked", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
           b"Content-Length: abc", b"Expect: 100-continue", b"Connection: close", b"Connection: keep-alive",
           b"X:\x01", b": x", b"NoColon", b"A" * 20000 + b": b"]


def good_request(token: str, value: float) -> bytes:
    body = b'{"value": %.3f}' % value
    return (b"POST /predict HTTP/1.1\r\nAuthorization: Bearer " + token.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def fuzz_cases(rng: random.Random, token: str, n: int) -> Iterator[bytes]:
    """``n`` raw requests; about a quarter are good and authorised (answered 200)."""
    auth = [b"Bearer " + token.encode(), b"Bearer wrong", b"bearer " + token.encode(), b"Basic dXNlcjpwYXNz",
            b"Bearer", b"Bearer " + token.encode()[:-1], b"Bearer " + b"x" * 5000, b"Bearer \xff" + token.encode()]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.25:
            yield good_request(token, rng.uniform(-5, 5))
        elif kind < 0.6:  # every part drawn from the hostile lists
            body = rng.choice(BODIES)
            lines = [rng.choice(METHODS) + b" " + rng.choice(PATHS) + b" " + rng.choice(VERSIONS)]
            if rng.random() < 0.7:
                lines.append(b"Authorization: " + rng.choice(auth))
            lines += rng.sample(HEADERS, rng.randint(0, 3))
            if rng.random() < 0.8:
                length = len(body) if rng.random() < 0.8 else rng.randint(0, 2 * len(body) + 5)
                lines.append(b"Content-Length: %d" % length)
            yield b"\r\n".join(lines) + b"\r\n\r\n" + body
        elif kind < 0.8:  # a good request with a few bytes flipped, inserted or deleted
            data = bytearray(good_request(token, 0.95))
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                op = rng.random()
                if op < 0.4:
                    data[i] = rng.randrange(256)
                elif op < 0.7:
                    data.insert(i, rng.randrange(256))
                else:
                    del data[i]
            yield bytes(data)
        elif kind < 0.95:
            yield rng.randbytes(rng.randint(1, 3000))
        else:  # header floods around the server's limit of 100 fields
            count = rng.choice([50, 99, 101, 500])
            yield b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(count)) + b"\r\n"


@dataclass(frozen=True)
class HttpOutcome:
    status: int | None  # None: no status line came back
    expected: bool  # the request had content, so an answer was due
    traceback: bool  # "Traceback" somewhere in what came back


def send_raw(port: int, data: bytes, timeout: float = 10.0) -> HttpOutcome:
    """Send ``data`` on a fresh connection, stop sending, and read until the server closes."""
    chunks = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may answer (413, 431) and close before all of it is sent
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        pass
    reply = b"".join(chunks)
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    return HttpOutcome(int(match.group(1)) if match else None, bool(data.strip()), b"Traceback" in reply)
