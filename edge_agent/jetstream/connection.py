"""An asyncio loop on a thread of its own, holding the NATS connection the rest of the (threaded) agent uses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client

from edge_agent.config import NatsConfig
from edge_agent.jetstream.jsapi import NATS_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")


class NatsThread:
    """``run(coro)`` from any thread; ``nc`` is the connection once ``connect`` returned."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self.nc: Client | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def connect(self, cfg: NatsConfig, name: str, timeout: float = 60.0) -> Client:
        """Connect (retrying until ``timeout``); afterwards nats-py reconnects by itself, forever."""
        self.nc = self.run(_connect(cfg, name, timeout)).result()
        return self.nc

    def close(self, timeout: float = 5.0) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                self.run(self.nc.close()).result(timeout)
            except (*NATS_ERRORS, concurrent.futures.TimeoutError) as e:  # closing a connection to a dead server
                log.debug("closing the NATS connection: %s", e)
        self.run(_cancel_others()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


async def _cancel_others() -> None:
    """End the loop's long-running tasks (pulls, outputs, heartbeats) before the loop stops."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _connect(cfg: NatsConfig, name: str, timeout: float) -> Client:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_log = -10.0

    async def quiet(e: Exception) -> None:
        nonlocal last_log
        if loop.time() - last_log >= 10.0:
            last_log = loop.time()
            log.warning("NATS: %s", e)

    while True:
        try:
            return await nats.connect(
                servers=list(cfg.servers), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                connect_timeout=2, allow_reconnect=True, error_cb=quiet,
            )
        except NATS_ERRORS as e:  # no server answers yet: keep trying until the deadline
            if loop.time() >= deadline:
                raise ConnectionError(f"no NATS server answered at {', '.join(cfg.servers)}: {e}") from e
            await quiet(e)
            await asyncio.sleep(0.5)
