"""An asyncio loop on a thread of its own, holding the NATS connection the rest of the (threaded) agent uses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client

from edge_agent.config import NatsConfig
from edge_agent.jetstream.access import NatsAccess
from edge_agent.jetstream.jsapi import NATS_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")


class NatsAccessError(ConnectionError):
    """A NATS server refused who we are (authentication) or we refused it (TLS): retrying will not help."""


class PlaintextRefused(nats.errors.Error):
    """nats.tls.enabled, and the server did not require TLS: nats-py would have talked to it in clear."""


def failure_kind(e: BaseException) -> str | None:
    """'authentication' or 'TLS' for a failure that a retry does not fix (a wrong secret, an untrusted server), else None."""
    text = str(e).lower()
    # nats-py raises a plain Error("nats: 'Authorization Violation'") when the server refuses a CONNECT
    # (AuthorizationError only when the server says so on a connection already made).
    if isinstance(e, nats.errors.AuthorizationError) or (
            isinstance(e, nats.errors.Error) and ("authorization violation" in text or "authentication" in text)):
        return "authentication"
    if isinstance(e, PlaintextRefused):
        return "TLS"
    # An untrusted server certificate (CERTIFICATE_VERIFY_FAILED), or the server's alert about ours (none shown
    # where its verify: true wants one, or one it does not trust).
    if isinstance(e, ssl.SSLError) and "CERTIFICATE" in str(getattr(e, "reason", "") or ""):
        return "TLS"
    return None


def describe_failure(e: BaseException, servers: str, access: NatsAccess) -> str:
    """One line an operator can act on: what kind of failure, where, and with which (named, never shown) credentials."""
    kind = failure_kind(e)
    if kind == "authentication":
        if access.summary.startswith("no authentication"):
            return (f"NATS authentication failed at {servers}: the server wants credentials and none are configured "
                    f"(nats.user, nats.token_env or nats.token_file, or nats.creds_file) ({e})")
        return f"NATS authentication failed at {servers}: the server refused {access.summary} ({e})"
    if kind == "TLS":
        return f"NATS TLS failed at {servers} with {access.summary}: {e}"
    return f"NATS: {e}"


class NatsThread:
    """``run(coro)`` from any thread; ``nc`` is the connection once ``connect`` returned."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self.nc: Client | None = None
        self.last_error = ""  # why the connection is down, for /readyz

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def connect(self, cfg: NatsConfig, name: str, access: NatsAccess, timeout: float = 60.0) -> Client:
        """Connect (retrying until ``timeout``); afterwards nats-py reconnects by itself, forever.

        Raises NatsAccessError at once when a server refuses the credentials or its certificate
        is not trusted, and ConnectionError when no server answered within ``timeout``.
        """
        self.nc = self.run(self._connect(cfg, name, access, timeout)).result()
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

    async def _connect(self, cfg: NatsConfig, name: str, access: NatsAccess, timeout: float) -> Client:
        loop = asyncio.get_running_loop()
        servers = ", ".join(cfg.servers)
        connecting = True
        fatal: asyncio.Future[BaseException] = loop.create_future()
        last_log = -10.0

        async def on_error(e: Exception) -> None:
            nonlocal last_log
            self.last_error = describe_failure(e, servers, access)
            if connecting and failure_kind(e) is not None and not fatal.done():
                fatal.set_result(e)  # at start: a wrong password or an untrusted server is a config error
                return
            if loop.time() - last_log >= 10.0:  # nats-py retries every half second: one line in ten seconds
                last_log = loop.time()
                log.log(logging.ERROR if failure_kind(e) else logging.WARNING, "%s", self.last_error)

        nc = Client()
        attempt: asyncio.Future[Any] = loop.create_task(nc.connect(
            # nats-py annotates reconnect_time_wait as int but sleeps for float seconds.
            servers=list(cfg.servers), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,  # type: ignore[arg-type]
            connect_timeout=2, allow_reconnect=True, error_cb=on_error, **connect_options(nc, access),
        ))
        waiting: set[asyncio.Future[Any]] = {attempt, fatal}
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        connecting = False
        if attempt in done:
            attempt.result()
            await _refuse_plaintext(nc, access)
            self.last_error = ""
            return nc
        attempt.cancel()  # nats-py itself retries the first connection for ever
        await asyncio.gather(attempt, return_exceptions=True)
        await nc.close()
        if fatal.done():
            raise NatsAccessError(describe_failure(fatal.result(), servers, access))
        raise ConnectionError(f"no NATS server answered at {servers} in {timeout:g} s ({self.last_error or 'no answer'})")


def connect_options(nc: Client, access: NatsAccess) -> dict[str, Any]:
    """nats.connect's keyword arguments for ``access``: credentials go out only over TLS when nats.tls.enabled."""

    def guarded(value: str) -> Callable[[], str]:
        # nats-py asks for credentials after its TLS upgrade, and upgrades only when the server requires TLS.
        def give() -> str:
            _require_tls(nc, access)
            return value

        return give

    options: dict[str, Any] = {}
    if access.tls is not None:
        options["tls"] = access.tls
    if access.user is not None and access.password is not None:
        options["user"], options["password"] = guarded(access.user), guarded(access.password)
    elif access.token is not None:
        options["token"] = guarded(access.token)
    elif access.creds_file is not None:
        options["user_credentials"] = access.creds_file
    return options


def _require_tls(nc: Client, access: NatsAccess) -> None:
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}  # the server's INFO: nats-py has no public accessor
    if access.tls_only and not info.get("tls_required"):
        raise PlaintextRefused("nats.tls.enabled, but the server does not require TLS: not connecting in clear")


async def _refuse_plaintext(nc: Client, access: NatsAccess) -> None:
    """A connection without credentials (or with a creds file, whose signature is bound to the server's nonce) is checked once made."""
    try:
        _require_tls(nc, access)
    except PlaintextRefused as e:
        where = nc.connected_url.netloc if nc.connected_url else "the server"
        await nc.close()
        raise NatsAccessError(f"NATS TLS failed at {where}: {e}") from None


async def _cancel_others() -> None:
    """End the loop's long-running tasks (pulls, outputs, heartbeats) before the loop stops."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
