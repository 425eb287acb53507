"""The JetStream API calls nats-py does not make: streams with a partitioning transform, pinned consumers, pulls in a group.

nats-py (2.16) knows neither priority groups nor pinned clients (server 2.11+), so these
are plain JSON requests on ``$JS.API.*`` subjects, as the server documents them (ADR-42).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client

NANOS = 1_000_000_000




class JetStreamApiError(Exception):
    """The server refused an API request; ``code`` and ``err_code`` are the server's."""

    def __init__(self, subject: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        super().__init__(f"{subject}: {error.get('description', error)} (code {self.code}, err_code {self.err_code})")


#: What a call to NATS may raise when the server is away, slow or says no.
NATS_ERRORS = (nats.errors.Error, JetStreamApiError, asyncio.TimeoutError, OSError)


async def api(nc: Client, subject: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """One ``$JS.API.<subject>`` request; raises JetStreamApiError when the answer is an error."""
    full = f"$JS.API.{subject}"
    reply = await nc.request(full, json.dumps(body).encode() if body is not None else b"", timeout=timeout)
    data: dict[str, Any] = json.loads(reply.data)
    if "error" in data:
        raise JetStreamApiError(full, data["error"])
    return data


@dataclass(frozen=True)
class Layout:
    """Where readings go: ``<subject>.<sensor>`` in, ``<subject>.<partition>.<sensor>`` stored, one consumer a partition."""

    stream: str
    subject: str
    partitions: int
    replicas: int
    group: str

    def stored(self, partition: int) -> str:
        return f"{self.subject}.{partition}.*"

    def consumer(self, partition: int) -> str:
        return f"{self.stream}-p{partition}"

    def partition_of(self, stored_subject: str) -> int:
        """The partition a stored message's subject names."""
        return int(stored_subject[len(self.subject) + 1:].split(".", 1)[0])


async def ensure_stream(nc: Client, layout: Layout, duplicate_window: float, max_age: float) -> None:
    """Create the readings stream (or bring its settings up to date); the transform partitions by sensor."""
    config = {
        "name": layout.stream,
        "subjects": [f"{layout.subject}.*"],
        "subject_transform": {
            "src": f"{layout.subject}.*",
            "dest": f"{layout.subject}.{{{{partition({layout.partitions},1)}}}}.{{{{wildcard(1)}}}}",
        },
        "retention": "limits",
        "storage": "file",
        "num_replicas": layout.replicas,
        "duplicate_window": int(duplicate_window * NANOS),
        "max_age": int(max_age * NANOS),
    }
    try:
        info = await api(nc, f"STREAM.INFO.{layout.stream}")
    except JetStreamApiError as e:
        if e.err_code != 10059:  # stream not found
            raise
        await api(nc, f"STREAM.CREATE.{layout.stream}", config)
        return
    transform = info["config"].get("subject_transform", {}).get("dest")
    if transform != config["subject_transform"]["dest"]:  # type: ignore[index]
        raise JetStreamApiError(f"stream {layout.stream}", {
            "description": f"partitions by {transform!r}, not into {layout.partitions} partitions: the partition "
                           "count is fixed when the stream is made (see docs/operations.md)"})
    await api(nc, f"STREAM.UPDATE.{layout.stream}", config)


async def ensure_consumers(nc: Client, layout: Layout, ack_wait: float, max_ack_pending: int, pin_timeout: float) -> None:
    """One durable pull consumer a partition, pinned: the server lets one client of its group pull at a time."""
    for p in range(layout.partitions):
        name = layout.consumer(p)
        await api(nc, f"CONSUMER.CREATE.{layout.stream}.{name}", {
            "stream_name": layout.stream,
            "config": {
                "name": name,
                "durable_name": name,
                "filter_subject": layout.stored(p),
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": int(ack_wait * NANOS),
                "max_ack_pending": max_ack_pending,
                "max_deliver": -1,
                "priority_groups": [layout.group],
                "priority_policy": "pinned_client",
                "priority_timeout": int(pin_timeout * NANOS),
            },
        })


def next_request(layout: Layout, batch: int, expires: float, pin_id: str | None) -> bytes:
    """The body of a pull in the group; ``pin_id`` is the id the server gave this client, once it has one."""
    body: dict[str, Any] = {"batch": batch, "expires": int(expires * NANOS), "group": layout.group}
    if pin_id:
        body["id"] = pin_id
    return json.dumps(body).encode()


async def unpin(nc: Client, layout: Layout, partition: int) -> None:
    """Let the server pin the next client that pulls (after this one finished with the partition)."""
    await api(nc, f"CONSUMER.UNPIN.{layout.stream}.{layout.consumer(partition)}", {"group": layout.group})
