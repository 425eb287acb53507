"""The shared test kit (bench/kit.py) keeps the promises the fault table's columns rest on.

*Accepted* means the broker PUBACKed the reading, not that paho took it; a collector with a
persistent session gets what was published while it was away. A kit that broke either would
make the delivery tests pass or fail for the wrong reason.
"""

from __future__ import annotations

import time

import pytest

from bench.kit import Broker, Collector, Sensor


@pytest.mark.broker
def test_a_reading_counts_as_accepted_only_once_the_broker_acknowledges_it(broker: Broker) -> None:
    if broker.kind == "testcontainers":
        pytest.skip("the container broker comes back on another port")
    with Sensor(broker, "kit") as sensor:
        assert sensor.send("kit/first", "1").accepted
        broker.stop()
        while sensor.client.is_connected():
            time.sleep(0.02)
        queued = sensor.publish("kit/second", "2")  # paho keeps it until the broker is back
        time.sleep(0.5)
        assert not queued.accepted and not sensor.wait_accepted(0.1)
        broker.start()
        assert sensor.wait_accepted(10) and queued.accepted


@pytest.mark.broker
def test_a_collector_with_a_persistent_session_gets_what_came_while_it_was_away(broker: Broker, sensor: Sensor) -> None:
    if broker.kind == "embedded":
        pytest.skip("a persistent MQTT 5 session needs Mosquitto (amqtt speaks 3.1.1)")
    with Collector(broker, ["kit/#"], client_id="kit-away", session_expiry=60):
        pass
    sensor.send("kit/while-away", "1")
    with Collector(broker, ["kit/#"], client_id="kit-away", session_expiry=60) as again:
        (message,) = again.wait_count("kit/", 1)
    assert message.topic == "kit/while-away" and message.payload == b"1"


def test_metric_sums_a_metrics_samples_over_its_labels_and_says_none_when_absent() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    from bench.kit import free_port, metric, metrics_text

    registry = CollectorRegistry()
    readings = Counter("x_readings", "Readings.", ["sensor"], registry=registry)
    readings.labels(sensor="a").inc(2)
    readings.labels(sensor="b").inc(3)
    Gauge("x_readings_in_hand", "A name the first one prefixes.", registry=registry).set(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        assert metric(port, "x_readings_total") == 5.0
        assert metric(port, "x_readings_in_hand") == 7.0
        assert metric(port, "x_missing") is None
    finally:
        server.shutdown()
        thread.join(5)
    assert metrics_text(port) == ""  # nobody answers now
    assert metric(port, "x_readings_total") is None
