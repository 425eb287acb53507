"""The ack ledger's rules, with no broker and no paho: which publish settles which reading, and when."""

from __future__ import annotations

import threading
import time

from edge_agent.mqtt.ledger import NOTHING, AckLedger, Outcome, Receipt


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def published(ledger: AckLedger, mid: int, receipt: Receipt | None = None) -> Outcome:
    """One publish the way the transport makes it: begin, the client takes it as ``mid``, register."""
    ledger.begin()
    return ledger.register(mid, receipt)


def test_a_reading_is_settled_by_its_verdicts_puback_not_before_nor_by_another() -> None:
    clock = Clock()
    ledger = AckLedger(limit=10, clock=clock)
    receipt = ledger.receive(mid=7, qos=1)
    assert ledger.in_hand == 1
    assert published(ledger, 1) == NOTHING  # the alert: settles nothing
    assert published(ledger, 2, receipt) == NOTHING  # the verdict: not settled before its PUBACK
    assert ledger.in_flight == 2 and ledger.awaiting()
    assert ledger.puback(1) == NOTHING
    clock.now += 0.25
    outcome = ledger.puback(2)
    assert outcome.settle == receipt and outcome.answered and outcome.latency == 0.25
    assert ledger.in_hand == 0 and ledger.in_flight == 0 and not ledger.awaiting()
    assert ledger.puback(2) == NOTHING  # a repeated PUBACK settles nothing twice


def test_a_puback_that_overtakes_the_registration_settles_once_at_registration() -> None:
    ledger = AckLedger(limit=10)
    receipt = ledger.receive(mid=7, qos=1)
    ledger.begin()
    assert ledger.puback(5) == NOTHING  # the network thread was faster than the publishing thread
    outcome = ledger.register(5, receipt)
    assert outcome.settle == receipt
    assert ledger.in_flight == 0 and ledger.puback(5) == NOTHING


def test_a_stale_puback_of_a_foreign_publish_never_settles_a_later_one_with_the_same_id() -> None:
    ledger = AckLedger(limit=10)
    assert ledger.puback(50) == NOTHING  # published around the ledger, while nothing was registering
    receipt = ledger.receive(mid=7, qos=1)
    assert published(ledger, 50, receipt) == NOTHING  # message ids wrap: the same id again
    assert ledger.puback(50).settle == receipt


def test_early_pubacks_are_forgotten_once_no_publish_is_registering() -> None:
    ledger = AckLedger(limit=10)
    ledger.begin()
    ledger.puback(60)  # not ours after all: its publish never registers as 60
    ledger.register(61, None)
    receipt = ledger.receive(mid=7, qos=1)
    assert published(ledger, 60, receipt) == NOTHING  # the old PUBACK does not settle the new 60


def test_a_refused_publish_leaves_its_reading_unsettled() -> None:
    ledger = AckLedger(limit=10)
    receipt = ledger.receive(mid=7, qos=1)
    published(ledger, 3, receipt)
    outcome = ledger.puback(3, refused=True)
    assert outcome.refused and outcome.settle is None and not outcome.answered
    assert ledger.in_hand == 1  # the broker keeps it and redelivers it to the next connection
    ledger.begin()
    ledger.puback(4, refused=True)
    assert ledger.register(4, receipt).refused  # a refusal that overtook its registration


def test_an_intake_reconnect_invalidates_receipts_but_publishes_stay_tracked_to_their_puback() -> None:
    ledger = AckLedger(limit=10)
    old = ledger.receive(mid=7, qos=1)
    published(ledger, 3, old)
    assert ledger.intake_reconnected() == old.generation + 1
    assert ledger.in_hand == 0 and not ledger.awaiting()
    outcome = ledger.puback(3)  # the client re-sent it on the new connection
    assert outcome.settle is None and outcome.answered  # went through, but acknowledges nothing
    assert ledger.in_flight == 0
    assert not ledger.settle(old)  # a rejection of the old connection is not acknowledged either
    new = ledger.receive(mid=7, qos=1)  # the broker redelivers it, maybe under the same id
    assert ledger.settle(new) and ledger.in_hand == 0


def test_settling_without_a_publish() -> None:
    ledger = AckLedger(limit=10)
    assert not ledger.settle(None)
    receipt = ledger.receive(mid=9, qos=1)
    assert ledger.settle(receipt) and ledger.in_hand == 0


def test_an_unqueued_publish_registers_nothing() -> None:
    ledger = AckLedger(limit=10)
    receipt = ledger.receive(mid=9, qos=1)
    ledger.begin()
    assert ledger.register(None, receipt) == NOTHING
    assert ledger.in_flight == 0 and ledger.in_hand == 1


def test_the_publisher_waits_while_the_bound_is_full_and_resumes_on_a_puback() -> None:
    ledger = AckLedger(limit=2)
    ledger.publisher_reconnected()
    published(ledger, 1)
    assert ledger.wait_for_room(0.0)
    published(ledger, 2)
    assert ledger.full and not ledger.wait_for_room(0.01)
    woke: list[float] = []

    def wait() -> None:
        assert ledger.wait_for_room(5.0)
        woke.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    assert not woke  # still waiting
    freed = time.monotonic()
    ledger.puback(1)
    waiter.join(5.0)
    assert woke and woke[0] - freed < 2.0 and not ledger.full  # woken by the PUBACK, not by its timeout


def test_a_broker_receive_maximum_lowers_the_bound_for_its_connection_only() -> None:
    ledger = AckLedger(limit=4)
    ledger.publisher_reconnected(receive_maximum=2)  # an MQTT 5 broker that takes 2 at once
    published(ledger, 1)
    published(ledger, 2)
    assert ledger.full and not ledger.wait_for_room(0.01)
    ledger.puback(1)
    ledger.puback(2)
    ledger.publisher_disconnected()
    ledger.publisher_reconnected(receive_maximum=None)  # the next broker announces none: the configured bound
    for mid in (3, 4, 5):
        published(ledger, mid)
    assert ledger.limit == 4 and not ledger.full
    ledger.publisher_disconnected()
    ledger.publisher_reconnected(receive_maximum=1000)  # never above the configured bound
    assert ledger.limit == 4


def test_a_publisher_reconnect_keeps_receipts_and_the_resent_publishes_settle_them() -> None:
    clock = Clock()
    ledger = AckLedger(limit=10, clock=clock)
    receipt = ledger.receive(mid=7, qos=1)
    published(ledger, 3, receipt)
    unanswered = ledger.receive(mid=8, qos=1)
    assert ledger.publisher_reconnected() == 1  # the client re-sends mid 3 on the new publishing connection
    assert ledger.generation == receipt.generation and ledger.in_hand == 2 and ledger.awaiting()
    clock.now += 2.0
    outcome = ledger.puback(3)  # the re-sent publish's PUBACK, on the new publishing connection
    assert outcome.settle == receipt and outcome.latency == 2.0
    assert ledger.settle(unanswered)  # a reading taken before the publisher reconnected is settled too
    assert ledger.in_hand == 0 and not ledger.awaiting()


def test_new_publishes_wait_for_the_publishing_connection() -> None:
    ledger = AckLedger(limit=10)
    assert not ledger.wait_for_room(0.0)  # never connected yet
    assert ledger.publisher_reconnected() == 0
    assert ledger.wait_for_room(0.0)  # nothing to re-send: open at once
    ledger.publisher_disconnected()
    assert not ledger.wait_for_room(0.01)


def test_after_a_reconnect_new_publishes_wait_until_the_first_puback() -> None:
    """paho re-sends what was in flight only after the CONNACK; a publish made before that would overtake it."""
    ledger = AckLedger(limit=10)
    ledger.publisher_reconnected()
    published(ledger, 3, ledger.receive(mid=7, qos=1))
    ledger.publisher_disconnected()
    assert ledger.publisher_reconnected() == 1
    assert not ledger.wait_for_room(0.01)  # mid 3 not re-sent yet
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(ledger.wait_for_room(5.0)))
    waiter.start()
    time.sleep(0.05)
    assert not woke
    ledger.puback(41)  # any PUBACK of the new connection (here the status message's) comes after the re-sent
    waiter.join(5.0)
    assert woke == [True] and ledger.in_flight == 1


def test_the_intake_waits_while_its_bound_of_readings_is_in_hand_and_resumes_on_a_settle() -> None:
    ledger = AckLedger(limit=10)
    first = ledger.receive(mid=1, qos=1)
    assert ledger.wait_to_receive(2, 0.0)
    second = ledger.receive(mid=2, qos=1, arrived=5.0)
    assert second.arrived == 5.0  # when it reached the agent, before any wait
    assert not ledger.wait_to_receive(2, 0.01)
    woke = threading.Event()

    def wait() -> None:
        if ledger.wait_to_receive(2, 30.0):
            woke.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    time.sleep(0.05)
    assert not woke.is_set()
    assert ledger.settle(first)  # settled when decided (its acknowledgement may not be written yet)
    waiter.join(10.0)  # woken by the settle, long before its own timeout
    assert woke.is_set() and ledger.in_hand == 1
    assert ledger.settle(second) and ledger.in_hand == 0


def test_an_intake_reconnect_releases_a_waiting_intake() -> None:
    ledger = AckLedger(limit=10)
    ledger.receive(mid=1, qos=1)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(ledger.wait_to_receive(1, 30.0)), daemon=True)
    waiter.start()
    time.sleep(0.05)
    ledger.intake_reconnected()  # the readings of the old connection are the broker's again
    waiter.join(10.0)  # woken by the reconnect, long before its own timeout
    assert results == [True]
