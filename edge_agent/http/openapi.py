"""The OpenAPI 3 description of the agent's HTTP API, served at GET /openapi.json.

Written by hand next to the server it describes (edge_agent/http/api.py) and kept true by
tests/test_openapi.py, which runs schemathesis against a live agent: every status code and
body the server can answer is declared here, and nothing is declared that it does not answer.
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent import package_version

OPENAPI_PATH = "/openapi.json"

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _schemas() -> dict[str, Any]:
    number = {"type": "number", "description": "A finite number (NaN and Infinity are refused)."}
    return {
        "PredictRequest": {
            "type": "object",
            "description": (
                "One reading: exactly one of 'value' (univariate models) and 'values' (field -> number, "
                "for multivariate models). Other keys are ignored, so a client may send its whole reading."
            ),
            "properties": {
                "value": number,
                "values": {"type": "object", "minProperties": 1, "additionalProperties": number},
                "sensor_id": {
                    "type": "string",
                    "minLength": 1,
                    "nullable": True,
                    "description": "Score with this sensor's model and in the context of its recent readings (unchanged); null means none.",
                },
            },
            "oneOf": [{"required": ["value"]}, {"required": ["values"]}],
            "example": {"value": 0.95},
        },
        "PredictResponse": {
            "type": "object",
            "required": ["anomaly", "score", "model", "model_version"],
            "additionalProperties": False,
            "properties": {
                "anomaly": {"type": "integer", "enum": [0, 1], "description": "1 when the score reaches decision.threshold."},
                "score": {"type": "number", "minimum": 0, "maximum": 1, "description": "Calibrated score; higher is stranger, 0.5 is the edge of normal operation."},
                "raw_score": {"type": "number", "description": "The Isolation Forest's own score before calibration."},
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "sensor_id": {"type": "string", "minLength": 1},
            },
            "example": {"anomaly": 0, "score": 0.12, "model": "default", "model_version": "sim-2025.1"},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {"error": {"type": "string", "description": "What is wrong with the request."}},
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Ready": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {"status": {"type": "string", "enum": ["ready"]}},
        },
        "NotReady": {
            "type": "object",
            "required": ["status", "reason"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["not ready"]},
                "reason": {"type": "string", "description": "e.g. the broker is not connected, and why."},
            },
        },
    }


def _read_only(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    """A GET (and its HEAD twin, same headers without a body) on a path that takes no input."""
    responses = {
        "200": ok,
        "400": _error("Malformed HTTP request."),
        "413": _error("Request body over http.max_body_bytes."),
        "503": _error("Too many connections; retry later."),
    }
    head = {key: ({"description": value["description"]} if key == "200" else value) for key, value in responses.items()}
    return {
        "get": {"summary": summary, "responses": responses},
        "head": {"summary": f"{summary} (headers only)", "responses": head},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of the HTTP API, as a JSON-ready dict."""
    predict = {
        "post": {
            "summary": "Score one reading with the same core as the MQTT pipeline",
            "operationId": "predict",
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("PredictRequest")}}},
            # Open unless http.token_env / http.token_file configure a bearer token.
            "security": [{}, {"bearer": []}],
            "responses": {
                "200": _json(_ref("PredictResponse"), "The verdict."),
                "401": _error("A bearer token is configured and the request's Authorization header is missing or wrong."),
                "400": _error("Not JSON, not an object, a missing/non-numeric/non-finite value, both or neither of value and values, or fields the model needs are missing."),
                "404": _error("No model scores this sensor_id (no models.assign pattern matches and models.default is unset)."),
                "411": _error("No Content-Length header."),
                "413": _error("Request body over http.max_body_bytes."),
                "415": _error("Content-Type other than application/json (curl's default form type is accepted)."),
                "503": _error("Too many connections; retry later."),
            },
        }
    }
    metrics_ok = {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    ready: dict[str, dict[str, Any]] = {
        "get": {
            "summary": "Ready when the models are loaded, the broker is connected and learned models can be saved",
            "responses": {
                "200": _json(_ref("Ready"), "Ready."),
                "400": _error("Malformed HTTP request."),
                "413": _error("Request body over http.max_body_bytes."),
                "503": _json({"oneOf": [_ref("NotReady"), _ref("Error")]}, "Not ready (and why), or too many connections."),
            },
        }
    }
    ready["head"] = {
        "summary": "Readiness (headers only)",
        "responses": {key: {"description": value["description"]} for key, value in ready["get"]["responses"].items()},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "edge-anomaly-agent HTTP API",
            "version": package_version("0.0.0"),
            "description": (
                "Scores sensor readings with the agent's Isolation Forest models and exposes its health and "
                "Prometheus metrics. Every error is JSON {\"error\": \"...\"}; an unknown path is 404 and a "
                "method a path does not serve is 405 with an Allow header."
            ),
        },
        "paths": {
            "/predict": predict,
            "/metrics": _read_only("Prometheus metrics", metrics_ok),
            "/healthz": _read_only("Liveness: 200 while the process serves", _json(_ref("Health"), "Alive.")),
            "/readyz": ready,
            OPENAPI_PATH: _read_only("This document", _json({"type": "object"}, "The OpenAPI document.")),
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_json() -> bytes:
    return json.dumps(openapi_document(), separators=(",", ":")).encode()
