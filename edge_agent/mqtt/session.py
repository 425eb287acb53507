"""What the agent's persistent MQTT session is subscribed to, remembered across restarts.

A persistent session keeps its subscriptions at the broker: after ``sources`` changes and the
agent restarts with the same client id, the broker would still deliver the old topics. The
agent writes the filters it subscribed to into its state dir; on the next connect it
unsubscribes those no longer configured, and acknowledges without a word whatever the broker
had already queued for them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from edge_agent.mqtt.topics import topic_matches

log = logging.getLogger(__name__)


def record_path(state_dir: Path, client_id: str) -> Path:
    """The record of one client id's session in ``state_dir`` (several agents may share the folder)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", client_id)
    return state_dir / f"subscriptions-{safe}.json"


class SubscriptionRecord:
    """The filters of the last session (from the file) against the ones configured now."""

    def __init__(self, path: Path, current: Sequence[str]) -> None:
        self.path = path
        self.current = tuple(current)
        #: Filters of the last session no longer configured (still recognised after the unsubscribe:
        #: messages the broker queued before it may follow).
        self.stale: tuple[str, ...] = tuple(f for f in self._read() if f not in self.current)
        self._unconfirmed = self.stale  # stale filters the broker has not confirmed unsubscribing
        self.dropped = 0  # messages of stale filters acknowledged unread

    def _read(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("cannot read the record of the last session's subscriptions %s (%s); old filters stay subscribed", self.path, e)
            return []
        filters = data.get("filters") if isinstance(data, dict) else None
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            log.warning("%s is not a subscription record; ignored", self.path)
            return []
        return filters

    def save(self) -> None:
        """Remember the current filters (after the broker granted them); stale ones stay listed until unsubscribed."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"filters": [*self.current, *self._unconfirmed]}), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot record the session's subscriptions in %s (%s): a later change of sources cannot unsubscribe them", self.path, e)

    def unsubscribed(self) -> None:
        """The broker confirmed the unsubscribe: the record forgets the stale filters."""
        self._unconfirmed = ()
        self.save()

    def only_stale(self, topic: str) -> bool:
        """Whether ``topic`` came through a filter no longer configured (and no current one)."""
        if not self.stale or not any(topic_matches(f, topic) for f in self.stale):
            return False
        if any(topic_matches(f, topic) for f in self.current):
            return False
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.info("%d message(s) of filters no longer configured acknowledged unread (latest on %s)", self.dropped, topic[:80])
        return True
