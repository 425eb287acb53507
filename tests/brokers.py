"""Real MQTT brokers for tests: Mosquitto on a free port (or a fallback), stoppable at will.

Order of preference: the ``mosquitto`` binary; testcontainers' Mosquitto when a
Docker engine answers; else the embedded pure-Python broker (amqtt).
"""

from __future__ import annotations

import shutil
import subprocess

from edge_agent.mqtt.local_broker import MOSQUITTO, EmbeddedBroker, MosquittoBroker, free_port, wait_listening

__all__ = ["MosquittoBroker", "EmbeddedBroker", "ContainerBroker", "free_port", "start_test_broker"]


class ContainerBroker:
    """testcontainers' Mosquitto, for machines with a Docker engine but no mosquitto binary."""

    kind = "testcontainers"

    def __init__(self) -> None:
        from testcontainers.community.mqtt import MosquittoContainer

        self._container = MosquittoContainer()
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> None:
        self._container.start()
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(self._container.MQTT_PORT))
        wait_listening(self.host, self.port)

    def stop(self) -> None:
        self._container.get_wrapped_container().stop()

    def restart(self) -> None:
        self._container.get_wrapped_container().restart()
        wait_listening(self.host, self.port)

    def close(self) -> None:
        self._container.stop()


def docker_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0


def start_test_broker() -> MosquittoBroker | ContainerBroker | EmbeddedBroker:
    """Mosquitto if installed, else testcontainers' Mosquitto if Docker answers, else amqtt."""
    broker: MosquittoBroker | ContainerBroker | EmbeddedBroker
    if MOSQUITTO is not None:
        broker = MosquittoBroker()
    elif docker_available():
        broker = ContainerBroker()
    else:
        broker = EmbeddedBroker()
    broker.start()
    return broker
