"""The agent's HTTP API: /predict, /metrics, /healthz, /readyz and the OpenAPI document.

The routes over edge_agent/http/server.py, which knows nothing of them. With a token
configured (http.token_env / http.token_file), POST /predict needs ``Authorization: Bearer
<token>`` (compared in constant time) and answers 401 without it; /metrics too with
http.metrics_token; /healthz and /readyz stay open for probes, and are answered from the
server's probe reserve when every connection is busy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edge_agent.config import HTTPConfig
from edge_agent.core.domain import Verdict
from edge_agent.core.engine import UnknownSensor
from edge_agent.core.jsonvalues import Rejected, describe, finite_number
from edge_agent.http.openapi import OPENAPI_PATH, openapi_json
from edge_agent.http.server import (
    JSON_TYPE,
    MAX_CONNECTIONS,
    Deferred,
    Handler,
    HttpError,
    HttpServer,
    Limits,
    Request,
    Response,
    Route,
    check_bearer,
    check_content_type,
    json_response,
)

log = logging.getLogger(__name__)

Predict = Callable[[Mapping[str, float], str | None], Verdict]
Readiness = Callable[[], tuple[bool, str]]

ALLOWED: dict[str, tuple[str, ...]] = {
    "/predict": ("POST",),
    "/metrics": ("GET", "HEAD"),
    "/healthz": ("GET", "HEAD"),
    "/readyz": ("GET", "HEAD"),
    OPENAPI_PATH: ("GET", "HEAD"),
}
PROBES = ("/healthz", "/readyz")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


# Built once: json.loads with a parse_constant builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _number(value: object, name: str) -> float:
    try:
        return finite_number(value, name)
    except Rejected as e:
        raise HttpError(400, e.detail) from None


def parse_predict_body(body: bytes) -> tuple[dict[str, float], str | None]:
    """The values and optional sensor id of a /predict body; HttpError(400) naming what is wrong.

    Unknown keys are ignored so clients can send their whole reading.
    """
    if not body:
        raise HttpError(400, "empty body: send a JSON object such as {\"value\": 0.95}")
    try:
        doc = _DECODER.decode(body.decode("utf-8"))
    except ValueError as e:  # also JSONDecodeError, UnicodeDecodeError, NaN/Infinity literals
        raise HttpError(400, f"body is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise HttpError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise HttpError(400, f"body must be a JSON object, got {describe(doc)}")
    has_value, has_values = "value" in doc, "values" in doc
    if has_value and has_values:
        raise HttpError(400, "give exactly one of 'value' and 'values', not both")
    if has_value:
        values = {"value": _number(doc["value"], "value")}
    elif has_values:
        raw = doc["values"]
        if not isinstance(raw, dict) or not raw:
            got = "an empty object" if isinstance(raw, dict) else describe(raw)
            raise HttpError(400, f"'values' must be a non-empty object of field -> number, got {got}")
        values = {k: _number(v, f"values.{k[:60]}") for k, v in raw.items()}
    else:
        raise HttpError(400, "missing 'value' (a number) or 'values' (an object of field -> number)")
    sensor_id = doc.get("sensor_id")
    if sensor_id is not None and (not isinstance(sensor_id, str) or not sensor_id):
        got = "an empty string" if sensor_id == "" else describe(sensor_id)
        raise HttpError(400, f"'sensor_id' must be a non-empty string, got {got}")
    return values, sensor_id


class HttpApi:
    """The agent's endpoints, served by an HttpServer on one port from a thread of its own."""

    def __init__(
        self,
        cfg: HTTPConfig,
        predict: Predict,
        readiness: Readiness,
        registry: CollectorRegistry,
        max_connections: int = MAX_CONNECTIONS,
        token: str | None = None,
    ) -> None:
        self.cfg = cfg
        # The bearer token POST /predict requires (None: open); never logged.
        self.token: bytes | None = token.encode() if token else None
        self.predict = predict
        self.readiness = readiness
        self.registry = registry
        handlers: dict[str, Handler] = {
            "/predict": self._predict,
            "/metrics": self._metrics,
            "/healthz": self._healthy,
            "/readyz": self._ready,
            OPENAPI_PATH: self._openapi,
        }
        routes = {path: Route(ALLOWED[path], handlers[path], probe=path in PROBES) for path in ALLOWED}
        self.server = HttpServer(
            routes, registry, host=cfg.host, port=cfg.port,
            limits=Limits(cfg.max_body_bytes, cfg.read_timeout, max_connections),
            not_found_hint="try POST /predict, GET /metrics, /healthz or /readyz",
        )
        self.requests = self.server.requests
        self.shed = self.server.shed

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.address

    def start(self) -> tuple[str, int]:
        """Bind http.host:http.port and serve; returns the bound address. OSError if it cannot bind."""
        return self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def _predict(self, req: Request, body: bytes) -> Response:
        check_bearer(self.token, req.authorization)
        check_content_type(req.content_type)
        values, sensor_id = parse_predict_body(body)
        try:
            verdict = self.predict(values, sensor_id)
        except UnknownSensor as e:
            raise HttpError(404, str(e)) from None
        except ValueError as e:  # the model needs fields the request lacks
            raise HttpError(400, str(e)) from None
        return json_response(200, verdict.to_answer())

    def _metrics(self, req: Request, body: bytes) -> Deferred:
        """Rendered on the server's worker thread: a large registry takes milliseconds, /predict must not wait."""
        if self.cfg.metrics_token:
            check_bearer(self.token, req.authorization)
        return Deferred(lambda: Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()))

    def _healthy(self, req: Request, body: bytes) -> Response:
        return json_response(200, {"status": "ok"})

    def _ready(self, req: Request, body: bytes) -> Response:
        try:
            ready, reason = self.readiness()
        except Exception as e:
            log.exception("readiness check failed")
            ready, reason = False, f"readiness check failed: {type(e).__name__}"
        if ready:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready", "reason": reason})

    def _openapi(self, req: Request, body: bytes) -> Response:
        return Response(200, openapi_json(), JSON_TYPE)
