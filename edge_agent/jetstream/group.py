"""The partitioned consumer group: membership and assignment in KV, one pinned puller per owned partition.

Each agent beats a key of its own in ``<bucket>-members`` (a bucket whose entries expire
after ``member_ttl``); every beat it reads the members and the assignment (key
``assignment`` in ``<bucket>``), and when they disagree it writes the next assignment
(:func:`rebalance`) with a compare-and-set, so one writer wins. It then pulls the
partitions assigned to it and lets go of the others: it stops pulling, waits until what it
holds is acknowledged, then unpins the consumer so the new owner is pinned at once. A dead
agent's partitions move once its key expires and its pin times out (``pin_timeout``); what
it held unacknowledged is redelivered after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from edge_agent.config import NatsConfig
from edge_agent.jetstream.assignment import owned_by, rebalance
from edge_agent.jetstream.jsapi import NATS_ERRORS, Layout, api, next_request, unpin

log = logging.getLogger(__name__)

ASSIGNMENT = "assignment"
PULL_EXPIRES = 2.0  # seconds a pull waits for readings; a pin lasts while its client keeps pulling


class PartitionConsumer:
    """Pulls one partition in the pinned group, never holding more than ``window`` unacknowledged readings."""

    def __init__(self, nc: Client, layout: Layout, partition: int, window: int, max_batch: int,
                 deliver: Callable[[Msg, PartitionConsumer], None], on_pinned: Callable[[int], None]) -> None:
        self.nc = nc
        self.layout = layout
        self.partition = partition
        self.window = window
        self.max_batch = max_batch
        self.deliver = deliver
        self.on_pinned = on_pinned
        self.in_flight = 0
        self.pin_id: str | None = None
        self._room = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._request = 0
        self._asked: dict[int, int] = {}  # open pull -> readings it may still bring

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def settled(self, count: int = 1) -> None:
        """``count`` readings of this partition were acknowledged (on the loop)."""
        self.in_flight -= count
        self._room.set()

    async def release(self, timeout: float) -> bool:
        """Stop pulling, wait for what is held to be acknowledged, then unpin. True if all was acknowledged."""
        self._stopping = True
        self._room.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight > 0 and loop.time() < deadline:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                break
        if self._task is not None:
            self._task.cancel()
        try:
            await unpin(self.nc, self.layout, self.partition)
        except NATS_ERRORS as e:  # no pin (nothing was ever pulled), or the server is away: the pin times out
            log.debug("unpinning partition %d: %s", self.partition, e)
        return self.in_flight <= 0

    async def _run(self) -> None:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(f"{inbox}.*", cb=self._on_message)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.layout.stream}.{self.layout.consumer(self.partition)}"
        # Pulls overlap: a new one goes out as soon as the window has room, without waiting for
        # an open one to fill or expire (the server may hold one back while our acks are in flight).
        least = max(1, min(self.max_batch, self.window // 4))
        try:
            while not self._stopping:
                asked = sum(self._asked.values())
                room = min(self.window - self.in_flight - asked, self.max_batch)
                if room < least and (asked or room <= 0):
                    self._room.clear()
                    try:
                        await asyncio.wait_for(self._room.wait(), PULL_EXPIRES + 1.0)
                    except asyncio.TimeoutError:
                        self._asked.clear()  # their 408s did not come (a server restart, say): ask again
                    continue
                self._request += 1
                self._asked[self._request] = room
                try:
                    await self.nc.publish(subject, next_request(self.layout, room, PULL_EXPIRES, self.pin_id),
                                          reply=f"{inbox}.{self._request}")
                except NATS_ERRORS as e:  # disconnected: nats-py reconnects; pull again shortly
                    log.debug("pull on partition %d: %s", self.partition, e)
                    self._asked.pop(self._request, None)
                    await asyncio.sleep(0.5)
        finally:
            await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None and not msg.reply:
            # The pull ended (408: expired, 409: the server cut it short, 423: the pin moved on).
            # A status comes on the pull's own inbox subject, which names the pull.
            if status == "423":
                self.pin_id = None
            with suppress(ValueError):
                self._asked.pop(int(msg.subject.rsplit(".", 1)[-1]), None)
            self._room.set()
            return
        pin = headers.get("Nats-Pin-Id")
        if pin and pin != self.pin_id:
            self.pin_id = pin
            self.on_pinned(self.partition)
        self.in_flight += 1
        # A reading comes on its stream subject, not the pull's inbox, so it cannot say which
        # pull brought it: the server fills waiting pulls in the order they came, so it counts
        # against the oldest. (Reading the pull from the subject never matched, so no pull
        # was ever used up: each window then waited out PULL_EXPIRES, 3 readings/s at window 10.)
        oldest = next(iter(self._asked), None)
        if oldest is not None:
            left = self._asked[oldest]
            if left <= 1:
                del self._asked[oldest]
            else:
                self._asked[oldest] = left - 1
        self.deliver(msg, self)


class Membership:
    """Beats this member's key, keeps the assignment current, and tells ``apply`` which partitions are ours."""

    def __init__(self, nc: Client, cfg: NatsConfig, member: str, apply: Callable[[set[int]], Awaitable[None]]) -> None:
        self.nc = nc
        self.cfg = cfg
        self.member = member
        self.apply = apply
        self.members_kv: KeyValue | None = None
        self.assignment_kv: KeyValue | None = None
        self.assignment: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.members_bucket = f"{cfg.bucket}-members"

    async def start(self) -> None:
        js = self.nc.jetstream()
        ttl = float(self.cfg.member_ttl)
        self.members_kv = await js.create_key_value(KeyValueConfig(
            bucket=self.members_bucket, history=1, ttl=ttl, replicas=self.cfg.replicas, storage=StorageType.FILE))
        self.assignment_kv = await js.create_key_value(KeyValueConfig(
            bucket=self.cfg.bucket, history=1, replicas=self.cfg.replicas, storage=StorageType.FILE))
        await self.beat()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._watch = loop.create_task(self._follow())

    async def _follow(self) -> None:
        """Act on an assignment another member wrote at once, not at the next beat: a hand-over takes no longer than it must."""
        assert self.assignment_kv is not None
        watcher = await self.assignment_kv.watch(ASSIGNMENT)
        async for entry in watcher:
            if entry is None or self._stopping or not entry.value:
                continue
            try:
                wanted = {int(p): m for p, m in json.loads(entry.value).items()}
            except (ValueError, AttributeError):
                log.error("ignoring an assignment that is not a JSON object of partition -> member")
                continue
            self.assignment = wanted
            await self.apply(owned_by(wanted, self.member))

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(float(self.cfg.member_ttl) / 3)
            try:
                await self.beat()
            except NATS_ERRORS as e:  # NATS away: keep what we have; the group moves on without us if it lasts
                log.warning("group heartbeat failed: %s", e)

    async def beat(self) -> None:
        assert self.members_kv is not None
        await self.members_kv.put(_key(self.member), json.dumps({"member": self.member}).encode())
        await self.apply(owned_by(await self.settle(), self.member))

    async def members(self) -> list[str]:
        """The members whose key is in the bucket, from one STREAM.INFO (the server's own snapshot).

        Not ``KeyValue.keys()``: nats-py lists keys through an ordered consumer, which can miss
        a key rewritten while it lists. Members started together beat together, so a beat now
        and then dropped a live member and moved its partitions away and back under steady load.
        """
        assert self.members_kv is not None
        prefix = f"$KV.{self.members_bucket}."
        state = (await api(self.nc, f"STREAM.INFO.KV_{self.members_bucket}", {"subjects_filter": f"{prefix}>"}))["state"]
        return sorted(_member(subject[len(prefix):]) for subject in state.get("subjects") or {})

    async def settle(self) -> dict[int, str]:
        """The current assignment, rewritten first when the members changed (compare-and-set; retried on a lost race)."""
        assert self.assignment_kv is not None
        members = await self.members()
        for _ in range(10):
            try:
                entry = await self.assignment_kv.get(ASSIGNMENT)
                current = {int(p): m for p, m in json.loads(entry.value or b"{}").items()}
                revision: int | None = entry.revision
            except KeyNotFoundError:
                current, revision = {}, None
            wanted = rebalance(current, self.cfg.partitions, members)
            if wanted == current:
                self.assignment = current
                return current
            body = json.dumps({str(p): m for p, m in wanted.items()}).encode()
            try:
                if revision is None:
                    await self.assignment_kv.create(ASSIGNMENT, body)
                else:
                    await self.assignment_kv.update(ASSIGNMENT, body, last=revision)
                log.info("partition assignment for members %s: %s", ", ".join(sorted(set(members))), _summary(wanted))
                self.assignment = wanted
                return wanted
            except KeyWrongLastSequenceError:
                continue  # another member wrote first: read theirs
            except NATS_ERRORS as e:  # created concurrently (the create path) or a slow server
                log.debug("writing the assignment: %s", e)
                continue
        return self.assignment

    async def leave(self) -> None:
        """Leave at once (not after member_ttl): delete our key and hand our partitions over."""
        self._stopping = True
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
        # Purged, not deleted: a delete leaves a marker under the key, which members() would count.
        await api(self.nc, f"STREAM.PURGE.KV_{self.members_bucket}",
                  {"filter": f"$KV.{self.members_bucket}.{_key(self.member)}"})
        await self.settle()


def _key(member: str) -> str:
    # KV keys allow letters, digits, -, _, /, = and .; a member id may hold anything else.
    return "m." + "".join(c if c.isalnum() or c in "-_" else f"={ord(c):x}=" for c in member)


def _member(key: str) -> str:
    """The member id a :func:`_key` names (``=`` is always escaped, so the escapes read back)."""
    return re.sub(r"=([0-9a-f]+)=", lambda m: chr(int(m.group(1), 16)), key.removeprefix("m."))


def _summary(assignment: dict[int, str]) -> str:
    by_member: dict[str, list[int]] = {}
    for p, m in assignment.items():
        by_member.setdefault(m, []).append(p)
    return "; ".join(f"{m}: {sorted(ps)}" for m, ps in sorted(by_member.items()))


async def consumer_state(nc: Client, layout: Layout, partition: int) -> dict[str, Any]:
    return await api(nc, f"CONSUMER.INFO.{layout.stream}.{layout.consumer(partition)}")
