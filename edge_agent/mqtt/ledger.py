"""The acknowledgement ledger: which publishes are in flight for which incoming reading, and when a reading is settled.

An incoming reading is *settled* (acknowledged to the broker) only once the broker has
acknowledged its verdict (and the alert published before it), or at once when nothing
will ever answer it (a rejected message, another agent's sensor). The ledger decides;
the transport only carries its decisions out on the wire.

Rules it keeps:

- **Two connections.** Readings come in (and are acknowledged) on the *intake* connection;
  verdicts go out on a *publishing* connection of their own. A receipt belongs to the intake
  connection its message came in on.
- **Generations.** Every intake connection is a new generation: a receipt of an earlier
  generation is never settled (the broker redelivers that message to the new connection),
  although the publish behind it is still tracked until its PUBACK. A new *publishing*
  connection changes no generation: the client re-sends the publishes in flight under
  their ids, and their PUBACKs still settle the readings they answer.
- **Early PUBACKs.** A PUBACK can arrive on the network thread before the publishing
  thread has registered its message id. While a publish is being registered, such a
  PUBACK is kept and applied at registration; otherwise an unknown id is not ours.
- **A bound on publishes in flight.** Message ids are 16-bit and a client that runs out
  of them overwrites queued messages, so the publishes not yet acknowledged are held to
  ``limit``: :meth:`wait_for_room` blocks the publisher while the bound is full. A broker
  that announces a smaller Receive Maximum (MQTT 5) lowers it for that connection.
- **Re-sent first.** After a reconnect the client re-sends the publishes in flight only once
  the broker's CONNACK is in, but a publish made meanwhile (the socket is open) goes out at
  once, ahead of them: a reading's verdict re-sent after the marked verdict of its
  redelivery. So :meth:`wait_for_room` also blocks from a disconnect until the new
  connection has nothing in flight or has had its first PUBACK (the re-sending is done by
  then: the client queues all of it before it reads the next packet).
- **A bound on readings in hand.** :meth:`wait_to_receive` blocks the intake while as many
  readings as its bound are taken and not settled. A reading counts as settled when the
  ledger decides so, not when its acknowledgement is written: the intake's acknowledgements
  are written by the very thread that waits.

No MQTT library, no I/O: the clock is passed in, and every rule above has a unit test
(tests/test_ledger.py) without a broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Receipt:
    """What acknowledges one incoming message, on the connection (generation) it came in on."""

    mid: int
    qos: int
    generation: int
    arrived: float  # the ledger's clock when the message came in: verdict latency starts here


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the broker's answer to one publish means for the transport."""

    settle: Receipt | None = None  # acknowledge this incoming message now
    refused: bool = False  # the broker refused the publish (its reading stays unsettled)
    answered: bool = False  # the broker took a publish that answers a reading (of whatever connection)
    latency: float | None = None  # seconds from the settled reading's arrival to this PUBACK


NOTHING = Outcome()


class AckLedger:
    """Outstanding publishes and the readings they settle; thread-safe, no I/O."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        """``limit``: publishes in flight (sent, not yet acknowledged by the broker) at most."""
        self._configured_limit = limit
        self.limit = limit  # for the current publishing connection: at most what its broker takes
        self._clock = clock
        self._cond = threading.Condition()
        self._generation = 0
        # mid of every publish not yet acknowledged -> the receipt it settles (None: nothing).
        self._pending: dict[int, Receipt | None] = {}
        # PUBACKs that overtook the registration of their publish (mid -> refused).
        self._early: dict[int, bool] = {}
        self._registering = 0  # publishes between the client's publish() and register()
        self._in_hand = 0  # receipts of this generation taken and not yet settled
        # Whether new publishes may go out: the publishing connection is up and has re-sent what was in flight.
        self._open = False

    # -- connections -------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def intake_reconnected(self) -> int:
        """A new intake connection: every receipt of earlier ones can no longer be settled. Returns the new generation."""
        with self._cond:
            self._generation += 1
            self._in_hand = 0
            self._cond.notify_all()
            return self._generation

    def publisher_reconnected(self, receive_maximum: int | None = None) -> int:
        """A new publishing connection: receipts stay valid, the publishes in flight stay tracked (the
        client re-sends them under their ids). New publishes wait until the first PUBACK if any are in
        flight. Returns how many are.

        ``receive_maximum``: the publishes in flight the broker takes at once, if it announced it
        (MQTT 5 CONNACK); the bound is the smaller of it and the configured one.
        """
        with self._cond:
            self.limit = min(self._configured_limit, receive_maximum or self._configured_limit)
            if not self._pending:
                self._open = True
                self._cond.notify_all()
            return len(self._pending)

    def publisher_disconnected(self) -> None:
        """The publishing connection dropped: new publishes wait for the next one (:meth:`publisher_reconnected`)."""
        with self._cond:
            self._open = False

    # -- incoming ----------------------------------------------------------------------

    def wait_to_receive(self, bound: int, timeout: float) -> bool:
        """Block while ``bound`` readings are in hand; False if still so after ``timeout``."""
        if self._in_hand < bound:
            return True  # without the lock: only the intake's own thread raises it, others only lower it
        with self._cond:
            return self._cond.wait_for(lambda: self._in_hand < bound, timeout)

    def receive(self, mid: int, qos: int, arrived: float | None = None) -> Receipt:
        """A message came in on the current intake connection (at ``arrived``, the ledger's clock; default
        now): the receipt to settle it with later."""
        with self._cond:
            self._in_hand += 1
            return Receipt(mid, qos, self._generation, self._clock() if arrived is None else arrived)

    def settle(self, receipt: Receipt | None) -> bool:
        """Settle ``receipt`` without a publish. True: acknowledge it now; False: nothing to send (stale or None)."""
        if receipt is None:
            return False
        with self._cond:
            return self._settled(receipt)

    def _settled(self, receipt: Receipt) -> bool:
        if receipt.generation != self._generation:
            return False
        self._in_hand = max(0, self._in_hand - 1)
        self._cond.notify_all()  # the intake may be waiting for room
        return True

    # -- outgoing ----------------------------------------------------------------------

    def wait_for_room(self, timeout: float) -> bool:
        """Block while ``limit`` publishes are in flight or the publishing connection is not open to new
        ones (down, or re-sending); False if still so after ``timeout``."""
        if self._open and len(self._pending) < self.limit:
            return True  # without the lock, as it would be released before the publish anyway
        with self._cond:
            return self._cond.wait_for(lambda: self._open and len(self._pending) < self.limit, timeout)

    def begin(self) -> None:
        """A publish is about to be handed to the client: PUBACKs for unknown ids are kept until it registers."""
        with self._cond:
            self._registering += 1

    def register(self, mid: int | None, receipt: Receipt | None) -> Outcome:
        """The client took the publish begun last as ``mid`` (None: it did not queue it)."""
        with self._cond:
            self._registering -= 1
            early = self._early.pop(mid, None) if mid is not None else None
            if mid is not None and early is None:
                self._pending[mid] = receipt
            if not self._registering:
                self._early.clear()  # PUBACKs of messages published around the ledger (not ours)
            if early is None:
                return NOTHING
            return self._answered(receipt, refused=early)

    def puback(self, mid: int, refused: bool = False) -> Outcome:
        """The broker acknowledged (or, ``refused``, rejected) the publish ``mid``."""
        with self._cond:
            if not self._open:
                self._open = True  # the connection's first PUBACK: what it re-sent went out before
                self._cond.notify_all()
            if mid not in self._pending:
                if self._registering:
                    self._early[mid] = refused
                return NOTHING
            receipt = self._pending.pop(mid)
            self._cond.notify_all()
            return self._answered(receipt, refused)

    def _answered(self, receipt: Receipt | None, refused: bool) -> Outcome:
        if refused:
            return Outcome(refused=True)
        if receipt is None:
            return NOTHING
        if not self._settled(receipt):
            return Outcome(answered=True)
        return Outcome(settle=receipt, answered=True, latency=self._clock() - receipt.arrived)

    # -- state -------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Publishes sent and not yet acknowledged by the broker (of any generation)."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether ``limit`` publishes are in flight: the publisher waits."""
        return len(self._pending) >= self.limit

    @property
    def in_hand(self) -> int:
        """Readings of this intake connection taken and not yet settled."""
        return self._in_hand

    def awaiting(self) -> bool:
        """Whether a publish in flight still settles a reading of this connection."""
        with self._cond:
            return any(r is not None and r.generation == self._generation for r in self._pending.values())
