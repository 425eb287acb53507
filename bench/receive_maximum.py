"""Does the broker keep to a client's receive maximum once the client acknowledges? Prints one table row per case.

    .venv/bin/python -m bench.receive_maximum

A client with manual acknowledgements (as the agent) connects with MQTT 5 receive maximum
``WINDOW`` and a persistent session; 2,000 QoS 1 messages are queued for it. Case "never":
it acknowledges nothing. Case "oldest first" / "newest first": another thread acknowledges
one message every 2 ms (the agent acknowledges as its verdicts' PUBACKs come back). A broker
that keeps the window never has more than ``WINDOW`` unacknowledged messages with the client.
Loopback only, a Mosquitto of its own, bounded: 2,000 messages and 3 s a case.
"""

from __future__ import annotations

import collections
import threading
import time

import paho.mqtt.client as paho

from bench import kit

WINDOW = 50
MESSAGES = 2000


def case(order: str) -> tuple[int, int, int]:
    """(received, acknowledged, most unacknowledged at once) for one acknowledgement order."""
    with kit.running_broker() as broker:
        waiting: collections.deque[int] = collections.deque()
        counts = {"received": 0, "acked": 0, "peak": 0}
        lock = threading.Lock()

        def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
            with lock:
                counts["received"] += 1
                waiting.append(message.mid)
                counts["peak"] = max(counts["peak"], counts["received"] - counts["acked"])

        agent = kit.client(client_id="window-probe", protocol=paho.MQTTv5, manual_ack=True)
        agent.on_message = on_message
        agent.on_connect = lambda client, *_: client.subscribe("probe/#", 1)
        agent.connect(broker.host, broker.port, clean_start=False,
                      properties=kit.session_properties(60, receive_maximum=WINDOW))
        agent.loop_start()
        time.sleep(0.5)
        sensor = kit.client(client_id="window-sensor")
        sensor.connect(broker.host, broker.port)
        sensor.loop_start()
        stop = threading.Event()

        def acknowledge() -> None:
            while not stop.wait(0.002):
                with lock:
                    if not waiting:
                        continue
                    mid = waiting.popleft() if order == "oldest first" else waiting.pop()
                    counts["acked"] += 1
                agent.ack(mid, 1)

        if order != "never":
            threading.Thread(target=acknowledge, daemon=True).start()
        for i in range(MESSAGES):
            sensor.publish("probe/x", str(i), qos=1)
        time.sleep(3.0)
        stop.set()
        for client in (agent, sensor):
            client.disconnect()
            client.loop_stop()
        return counts["received"], counts["acked"], counts["peak"]


def main() -> None:
    print("| acknowledgements | receive maximum | messages queued | received | acknowledged | most unacknowledged at once |")
    print("|---|---:|---:|---:|---:|---:|")
    for order in ("never", "oldest first", "newest first"):
        received, acked, peak = case(order)
        print(f"| {order} | {WINDOW} | {MESSAGES} | {received} | {acked} | {peak} |")


if __name__ == "__main__":
    main()
