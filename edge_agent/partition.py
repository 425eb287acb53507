"""Scale-out by sensor: several agents share one site's topics, each scoring only its own sensors.

Every agent subscribes to the same sources with its own persistent session, so the broker
sends each reading to all of them; each keeps the readings of the sensors whose id hashes to
its ``partition.index`` and acknowledges the others without scoring them. A sensor's whole
stream therefore lands on one agent (its streaming features and k-of-n state stay whole), and
no reading is scored twice. The hash is CRC-32 of the UTF-8 sensor id, the same on every
machine and Python version (unlike ``hash()``), so agents agree without talking to each other.

Messages that name no sensor (a topic no source matches, a retained message) belong to
partition 0, so that exactly one agent counts and reports them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from edge_agent.config import PartitionConfig
from edge_agent.domain import InvalidReading, Reading

Item = Reading | InvalidReading

#: The reason given to the transport when it acknowledges another agent's reading.
OTHER_PARTITION = "other_partition"


def partition_of(sensor_id: str | None, count: int) -> int:
    """The partition (0 .. count - 1) that scores ``sensor_id``; None (no sensor) is partition 0."""
    if sensor_id is None or count <= 1:
        return 0
    return zlib.crc32(sensor_id.encode("utf-8", "surrogatepass")) % count


class PartitionFilter:
    """Wraps the pipeline's ``submit``: passes on this agent's items, acknowledges the rest.

    ``acknowledge`` settles a message without scoring or reporting it (the transport's
    ``publish_error(item, report=False)``); it is called on the MQTT network thread.
    """

    def __init__(
        self,
        cfg: PartitionConfig,
        submit: Callable[[Item], None],
        acknowledge: Callable[[InvalidReading], None],
        registry: CollectorRegistry,
    ) -> None:
        self.count = cfg.count
        self.index = cfg.index
        self._submit = submit
        self._acknowledge = acknowledge
        self._skipped = Counter(
            "edge_agent_partition_skipped",
            "Messages left to the other agents of the partition (their sensors hash elsewhere).",
            registry=registry,
        )

    def owns(self, sensor_id: str | None) -> bool:
        return partition_of(sensor_id, self.count) == self.index

    def __call__(self, item: Item) -> None:
        if self.owns(item.sensor_id):
            self._submit(item)
            return
        self._skipped.inc()
        if isinstance(item, Reading):
            detail = f"sensor {item.sensor_id!r} belongs to partition {partition_of(item.sensor_id, self.count)}"
            item = InvalidReading(OTHER_PARTITION, detail, item.topic, item.sensor_id, item.ack)
        self._acknowledge(item)
