"""A small strict HTTP/1.1 server on asyncio, knowing nothing of what it serves.

Requests are parsed by hand (request line, headers, a Content-Length body) in an
``asyncio.Protocol``: ``http.server`` costs several times more per request, and a scoring call
is only tens of microseconds, so the parser is most of the work. Every answer the server itself
makes is JSON; no input can produce a stack trace or a 5xx other than the documented 503s and a
logged, counted 500 for a bug. What each path does is a ``Route`` (edge_agent/http/api.py).

Slow clients cannot hold the server: a request must arrive within ``read_timeout``, and when all
connections are taken a new one sheds the connection that has waited longest for its request (a
client dripping bytes, or an idle keep-alive), so real calls and health probes get through
however many slow ones there are; when every connection is busy answering, PROBE_RESERVE more
serve the probe routes alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

# Connections served at once; beyond, the one waiting longest for its request is shed
# (a 503 when every connection is busy answering). A Pi's default limit is 1024
# descriptors and MQTT and model files need some too.
MAX_CONNECTIONS = 256
# Connections beyond MAX_CONNECTIONS kept for health probes, used only when every
# connection is busy answering (nothing to shed): they serve /healthz and /readyz alone.
PROBE_RESERVE = 16
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
# After a response that ends the connection the server stops sending but keeps
# reading (and discarding) for a moment: closing with unread input makes the
# kernel send a reset, which can destroy the response before the client reads it.
LINGER_SECONDS = 2.0
STOP_TIMEOUT = 5.0
LISTEN_BACKLOG = 512

JSON_TYPE = b"application/json"
CURL_DEFAULT_TYPE = b"application/x-www-form-urlencoded"
REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}
_REASONS = {code: reason.encode() for code, reason in REASONS.items()}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A header block: "name: value" lines, each ending in CRLF, values free of control
# characters except tab (obs-text, bytes >= 0x80, is allowed as RFC 9110 says).
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r\n")
_DIGITS = re.compile(rb"[0-9]{1,18}")


class HttpError(Exception):
    """A request the server answers with a 4xx: ``status`` and the message naming the problem."""

    def __init__(self, status: int, message: str, allow: str | None = None, authenticate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow
        self.authenticate = authenticate  # WWW-Authenticate of a 401


@dataclass(slots=True)
class Request:
    """A parsed request head; the body follows on the connection."""

    method: str
    path: str
    keep_alive: bool
    http10: bool
    content_length: int | None
    content_type: bytes | None
    expect_continue: bool
    authorization: bytes | None = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON_TYPE
    allow: str | None = None
    authenticate: str | None = None


def json_response(status: int, obj: Any, allow: str | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), JSON_TYPE, allow)


def error_response(status: int, message: str, allow: str | None = None, authenticate: str | None = None) -> Response:
    resp = json_response(status, {"error": message}, allow)
    resp.authenticate = authenticate
    return resp


def encode_response(resp: Response, keep_alive: bool, http10: bool = False, head_only: bool = False) -> bytes:
    """The bytes of a complete response; HEAD gets the headers GET would, without the body."""
    extra = b"" if resp.allow is None else b"Allow: %s\r\n" % resp.allow.encode()
    if resp.authenticate is not None:
        extra += b"WWW-Authenticate: %s\r\n" % resp.authenticate.encode()
    if not keep_alive:
        extra += b"Connection: close\r\n"
    elif http10:
        extra += b"Connection: keep-alive\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        resp.status, _REASONS[resp.status], resp.content_type, len(resp.body), extra, b"" if head_only else resp.body,
    )


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (without the blank line); raise HttpError if malformed."""
    line_end = head.find(b"\r\n")
    request_line, block = (head, b"") if line_end < 0 else (head[:line_end], head[line_end + 2 :] + b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line: expected 'METHOD /path HTTP/1.1'")
    method_b, target, version = parts
    if not _TOKEN.fullmatch(method_b):
        raise HttpError(400, "malformed request line: invalid method")
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    else:
        raise HttpError(400, "unsupported HTTP version: use HTTP/1.1 or HTTP/1.0")
    path_b = _target_path(target)
    if block.count(b"\r\n") > MAX_HEADERS:
        raise HttpError(431, f"too many header fields (at most {MAX_HEADERS})")
    # One C-level pass validates every field line; the slow path only words the error.
    if not _FIELDS.fullmatch(block):
        raise _header_error(block)

    content_length: int | None = None
    content_type: bytes | None = None
    connection = b""
    expect_continue = False
    authorization: bytes | None = None
    for name, value in _FIELD.findall(block):
        key = name.lower()
        if key == b"content-length":
            if not _DIGITS.fullmatch(value):
                if value.isdigit():
                    raise HttpError(413, "request body too large (Content-Length)")
                raise HttpError(400, "invalid Content-Length header")
            n = int(value)
            if content_length is not None and content_length != n:
                raise HttpError(400, "conflicting Content-Length headers")
            content_length = n
        elif key == b"transfer-encoding":
            raise HttpError(411, "Transfer-Encoding is not supported: send the body with a Content-Length header")
        elif key == b"content-type":
            content_type = value
        elif key == b"connection":
            connection += b"," + value.lower()
        elif key == b"expect":
            expect_continue = value.lower() == b"100-continue"
        elif key == b"authorization":
            authorization = value

    if http10:
        keep_alive = b"keep-alive" in {t.strip() for t in connection.split(b",")}
    else:
        keep_alive = not connection or b"close" not in {t.strip() for t in connection.split(b",")}
    try:
        path = path_b.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target must be ASCII") from None
    return Request(
        method=method_b.decode("ascii"), path=path, keep_alive=keep_alive, http10=http10,
        content_length=content_length, content_type=content_type, expect_continue=expect_continue,
        authorization=authorization,
    )


def _header_error(block: bytes) -> HttpError:
    for line in block.split(b"\r\n")[:-1]:
        name, sep, _ = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            return HttpError(400, "malformed header field: expected 'Name: value'")
    return HttpError(400, "malformed header field: control character in value")


def _target_path(target: bytes) -> bytes:
    """The path of an origin-form (/p?q) or absolute-form (http://host/p) request target."""
    if target.startswith(b"/"):
        return target.split(b"?", 1)[0]
    lower = target[:8].lower()
    if lower.startswith((b"http://", b"https://")):
        rest = target.split(b"//", 1)[1]
        slash = rest.find(b"/")
        return rest[slash:].split(b"?", 1)[0] if slash >= 0 else b"/"
    raise HttpError(400, "request target must be a path such as /predict")


def check_content_type(content_type: bytes | None) -> None:
    """Accept application/json (utf-8), no Content-Type, or curl's default; 415 for anything else.

    ``curl -d '{"value": 0.95}' .../predict`` labels the body form-urlencoded;
    the body is still read as JSON, so that one-liner works as users expect.
    """
    if content_type is None:
        return
    media, *params = content_type.split(b";")
    media = media.strip().lower()
    if media == CURL_DEFAULT_TYPE:
        return
    if media != JSON_TYPE:
        raise HttpError(415, "Content-Type must be application/json")
    for p in params:
        name, _, value = p.partition(b"=")
        if name.strip().lower() == b"charset" and value.strip(b" \t\"").lower() not in (b"utf-8", b"utf8"):
            raise HttpError(415, "Content-Type charset must be utf-8")


def check_bearer(token: bytes | None, authorization: bytes | None) -> None:
    """Pass when no token is configured or ``Authorization: Bearer <token>`` carries it; else HttpError(401).

    The comparison takes the same time wherever the first wrong byte is (hmac.compare_digest).
    """
    if token is None:
        return
    if authorization is None:
        raise HttpError(401, "missing bearer token: send 'Authorization: Bearer <token>'", authenticate='Bearer realm="edge-agent"')
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(b" \t"), token):
        raise HttpError(401, "invalid bearer token", authenticate='Bearer realm="edge-agent", error="invalid_token"')




@dataclass(frozen=True, slots=True)
class Deferred:
    """An answer rendered on the server's worker thread (e.g. a large /metrics), so other requests need not wait."""

    render: Callable[[], Response]


Handler = Callable[[Request, bytes], "Response | Deferred"]


@dataclass(frozen=True)
class Route:
    """What one path answers: its methods, its handler, and whether it is a health probe (served from the reserve)."""

    methods: tuple[str, ...]
    handle: Handler
    probe: bool = False


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 65536
    read_timeout: float = 10.0  # seconds a client may take to send its request
    max_connections: int = MAX_CONNECTIONS


class _Server:
    """State shared by the connections of one running HttpServer (lives on the loop thread)."""

    def __init__(self, api: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.api = api
        self.loop = loop
        self.connections: set[_Connection] = set()
        self.accepted = 0
        self.probes = 0  # connections admitted from PROBE_RESERVE

    def shed_slowest(self) -> bool:
        """Make room for a new connection: drop the one waiting longest for a request (False: all busy)."""
        victim = min((c for c in self.connections if c.accepted and not c.busy and not c.closing),
                     key=lambda c: c.waiting_since, default=None)
        if victim is None:
            return False
        victim.shed()
        self.api.shed.inc()
        return True

    def new_connection(self) -> _Connection:
        return _Connection(self)


class _Connection(asyncio.Protocol):
    """One client connection: parses pipelined requests from a buffer and answers them in order."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.api = server.api
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.request: Request | None = None  # head parsed, waiting for the body
        self.accepted = False
        self.probe_only = False  # admitted from PROBE_RESERVE: /healthz and /readyz only
        self.closing = False  # a final response is out; input is discarded
        self.eof = False
        self.busy = False  # a response is being produced off the loop (/metrics)
        self.write_paused = False
        self.read_paused = False
        self.sent_continue = False
        self.deadline = 0.0
        self.waiting_since = 0.0  # when it began waiting for its current request
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        if self.server.accepted >= self.api.limits.max_connections and not self.server.shed_slowest():
            if self.server.probes >= PROBE_RESERVE:
                self._finish(error_response(503, "too many connections; retry later"), "other")
                return
            self.probe_only = True
            self.server.probes += 1
        else:
            self.accepted = True
            self.server.accepted += 1
        self.waiting_since = self.loop.time()
        self._arm(self.waiting_since + self.api.limits.read_timeout)

    def shed(self) -> None:
        """Dropped to make room (see _Server.shed_slowest): its slot is free at once."""
        self.server.accepted -= 1
        self.accepted = False
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.probe_only:
            self.server.probes -= 1
            self.probe_only = False
        if self.accepted:
            self.server.accepted -= 1
            self.accepted = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buf += data
        self._process()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.closing:
            self._process()
        elif self.transport is not None:
            self.transport.close()
        return True  # the transport stays open until a pending response is out

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        self._process()

    # -- request handling -------------------------------------------------

    def _process(self) -> None:
        try:
            self._process_requests()
        except Exception:  # a bug in this module must not kill the connection silently
            log.exception("HTTP connection failed")
            self._finish(error_response(500, "internal server error"), "other")

    def _process_requests(self) -> None:
        while not (self.closing or self.busy or self.write_paused):
            req = self.request
            if req is None:
                while self.buf[:2] == b"\r\n":  # tolerated before a request line (RFC 9112 2.2)
                    del self.buf[:2]
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEAD_BYTES:
                        self._finish(error_response(431, f"request head larger than {MAX_HEAD_BYTES} bytes"), "other")
                    elif self.eof:
                        self._end_of_input()
                    return
                if end > MAX_HEAD_BYTES:
                    self._finish(error_response(431, f"request head larger than {MAX_HEAD_BYTES} bytes"), "other")
                    return
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                try:
                    req = parse_head(head)
                    self._check_framing(req)
                except HttpError as e:
                    self._finish(error_response(e.status, e.message), "other")
                    return
                self.request = req
                self.sent_continue = False
            n = req.content_length or 0
            if len(self.buf) < n:
                if self.eof:
                    self._end_of_input()
                elif req.expect_continue and not self.sent_continue and not req.http10 and self.transport is not None:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.sent_continue = True
                return
            body = bytes(self.buf[:n])
            del self.buf[:n]
            self.request = None
            self._dispatch(req, body)
        if self.eof and not (self.closing or self.busy or self.write_paused):
            self._end_of_input()

    def _check_framing(self, req: Request) -> None:
        if req.content_length is None:
            if req.method == "POST":
                raise HttpError(411, "Content-Length header required on POST")
        elif req.content_length > self.api.limits.max_body_bytes:
            raise HttpError(413, f"request body too large: at most {self.api.limits.max_body_bytes} bytes (http.max_body_bytes)")

    def _end_of_input(self) -> None:
        """The client stopped sending: answer a cut-off request with 400, then close."""
        if self.request is not None or self.buf.strip():
            self._finish(error_response(400, "incomplete request: connection closed mid-request"), "other")
        elif self.transport is not None:
            self.closing = True
            self.transport.close()

    def _dispatch(self, req: Request, body: bytes) -> None:
        path = req.path if req.path in self.api.routes else "other"
        try:
            answer = self._route(req, path, body)
        except HttpError as e:
            answer = error_response(e.status, e.message, e.allow, e.authenticate)
        except Exception:
            log.exception("HTTP %s %s failed", req.method, path)
            answer = error_response(500, "internal server error")
        if isinstance(answer, Deferred):
            self._defer(req, path, answer)
        else:
            self._respond(req, path, answer)

    def _route(self, req: Request, path: str, body: bytes) -> Response | Deferred:
        route = self.api.routes.get(path)
        if route is None:
            raise HttpError(404, f"no such endpoint {req.path[:100]!r}; {self.api.not_found_hint}")
        if req.method not in route.methods:
            methods = route.methods
            raise HttpError(405, f"method {req.method[:20]} not allowed on {path}; use {' or '.join(methods)}", allow=", ".join(methods))
        if self.probe_only and not route.probe:
            probes = " and ".join(p for p, r in self.api.routes.items() if r.probe)
            raise HttpError(503, f"too many connections, all busy: only {probes} are answered now; retry later")
        return route.handle(req, body)

    def _defer(self, req: Request, path: str, answer: Deferred) -> None:
        """Render an answer on the worker thread; this connection reads nothing more until it is out."""
        self.busy = True
        self._update_reading()
        assert self.api.executor is not None
        fut = self.loop.run_in_executor(self.api.executor, answer.render)

        def done(f: asyncio.Future[Response]) -> None:
            self.busy = False
            if self.transport is None:
                return
            try:
                resp = f.result()
            except Exception:
                log.exception("HTTP %s %s failed", req.method, path)
                resp = error_response(500, "internal server error")
            self._respond(req, path, resp)
            self._update_reading()
            self._process()

        fut.add_done_callback(done)

    # -- responses and connection lifetime --------------------------------

    def _respond(self, req: Request, path: str, resp: Response) -> None:
        self.api.count(path, resp.status)
        if not req.keep_alive:
            self._finish(resp, None, req.http10, head_only=req.method == "HEAD")
            return
        if self.transport is not None:
            self.transport.write(encode_response(resp, True, req.http10, head_only=req.method == "HEAD"))
        self.waiting_since = self.loop.time()
        self.deadline = self.waiting_since + self.api.limits.read_timeout

    def _finish(self, resp: Response, path: str | None, http10: bool = False, head_only: bool = False) -> None:
        """Send a last response, stop sending, and discard input until the client closes (or linger ends)."""
        if path is not None:
            self.api.count(path, resp.status)
        transport = self.transport
        self.closing = True
        self.request = None
        self.buf.clear()
        if transport is None:
            return
        transport.write(encode_response(resp, False, http10, head_only))
        if self.eof or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:
            transport.abort()
            return
        if self.read_paused:
            transport.resume_reading()
            self.read_paused = False
        self._arm(self.loop.time() + LINGER_SECONDS)

    def _update_reading(self) -> None:
        if self.transport is None or self.closing:
            return
        want_pause = self.busy or self.write_paused
        if want_pause != self.read_paused:
            self.read_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _arm(self, deadline: float) -> None:
        # One timer per connection, re-armed lazily: requests only move the deadline.
        self.deadline = deadline
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        if self.closing:
            transport.abort()
            return
        now = self.loop.time()
        if self.busy or now < self.deadline:
            self._arm(max(self.deadline, now + 0.05) if not self.busy else now + self.api.limits.read_timeout)
            return
        if self.write_paused:
            transport.abort()  # the client reads nothing we send: nothing to tell it
        elif self.request is not None or self.buf.strip():
            self._finish(error_response(408, f"request not received within {self.api.limits.read_timeout} s (http.read_timeout)"), "other")
        else:
            self.closing = True
            transport.close()  # idle keep-alive connection


class HttpServer:
    """Serves ``routes`` on one port from a thread of its own (an asyncio loop), with one worker thread for Deferred answers."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        limits: Limits = Limits(),
        not_found_hint: str = "",
    ) -> None:
        self.routes = dict(routes)
        self.host, self.port = host, port
        self.limits = limits
        self.not_found_hint = not_found_hint
        self.requests = Counter(
            "edge_agent_http_requests", "HTTP requests answered, by endpoint and status code.",
            ["path", "code"], registry=registry,
        )
        self.shed = Counter(
            "edge_agent_http_connections_shed", "Connections dropped to make room for a new one (the one waiting longest for its request).",
            registry=registry,
        )
        self._children: dict[tuple[str, int], Any] = {}  # labels() takes a lock and a lookup per call
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._aserver: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    def count(self, path: str, code: int) -> None:
        child = self._children.get((path, code))
        if child is None:
            child = self._children[(path, code)] = self.requests.labels(path=path, code=str(code))
        child.inc()

    def start(self) -> tuple[str, int]:
        """Bind ``host:port`` and serve; returns the bound address. OSError if it cannot bind."""
        if self._thread is not None:
            raise RuntimeError("HttpServer already started")
        sock = _listen(self.host, self.port)
        # One worker: concurrent Deferred answers (scrapes) queue up instead of rendering in parallel.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-metrics")
        self.address = sock.getsockname()[:2]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = _Server(self, loop)
        try:
            self._aserver = loop.run_until_complete(
                loop.create_server(self._server.new_connection, sock=sock, backlog=LISTEN_BACKLOG)
            )
        except BaseException:
            sock.close()
            loop.close()
            self._loop = None
            raise
        self._thread = threading.Thread(target=loop.run_forever, name="http-api", daemon=True)
        self._thread.start()
        log.debug("HTTP API listening on %s:%d", *self.address)
        return self.address

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread (bounded)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        done = threading.Event()

        def shutdown() -> None:
            if self._aserver is not None:
                self._aserver.close()
            for conn in list(self._server.connections if self._server else ()):
                if conn.transport is not None:
                    conn.transport.abort()
            loop.call_soon(loop.stop)
            done.set()

        loop.call_soon_threadsafe(shutdown)  # runs as soon as the loop does, even right after start()
        done.wait(STOP_TIMEOUT)
        thread.join(STOP_TIMEOUT)
        if not thread.is_alive():
            loop.run_until_complete(asyncio.sleep(0))  # let aborted transports run connection_lost
            loop.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        self._loop = self._thread = None
        self._server = self._aserver = None


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise OSError(e.errno, f"HTTP API cannot listen on {host}:{port} (http.host/http.port): {e.strerror or e}") from e
    try:
        # Like every server: rebind at once after a restart, despite old connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"HTTP API cannot listen on {host}:{port} (http.host/http.port): {e.strerror or e}") from e
    return sock
