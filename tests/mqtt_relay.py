"""A TCP relay in front of a real broker that sees whole MQTT packets and lets a test lose, hold or cut them.

Each packet, either way, goes through ``decide`` (which the test may swap at any time):
``"pass"`` forwards it, ``"drop"`` loses it as a broken network would, ``"hold"`` stops that
direction of that connection, in order, until :meth:`MqttRelay.release`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

CONNECT, CONNACK, PUBLISH, PUBACK, SUBACK = 0x10, 0x20, 0x30, 0x40, 0x90

Action = Literal["pass", "drop", "hold"]


@dataclass(frozen=True)
class Packet:
    kind: int  # the packet type's high nibble: CONNECT, PUBLISH, ...
    from_broker: bool
    client_id: str  # of the connection it travels on ("" until its CONNECT has passed)


def _pass(packet: Packet) -> Action:
    return "pass"


class MqttRelay:
    def __init__(self, broker: Any, decide: Callable[[Packet], Action] = _pass) -> None:
        self.decide = decide
        self._broker = (broker.host, broker.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()
        self._released = threading.Event()
        self.holding = threading.Event()  # set while a packet is held
        self._lock = threading.Lock()
        self._links: list[tuple[list[str], socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        """Forward what is held; later "hold" decisions hold again."""
        with self._lock:
            released, self._released = self._released, threading.Event()
        released.set()

    def cut(self, client_id: str) -> None:
        """Close ``client_id``'s connections on both sides, as a network failure would."""
        with self._lock:
            cut = [link for link in self._links if link[0][0] == client_id]
        for _, a, b in cut:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.decide = _pass
        self.release()
        self._listener.close()
        with self._lock:
            for _, a, b in self._links:
                a.close()
                b.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._broker)
                client_id = [""]  # filled in from the CONNECT, shared by both directions
                with self._lock:
                    self._links.append((client_id, client, upstream))
                threading.Thread(target=self._pump, args=(client, upstream, False, client_id), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True, client_id), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_broker: bool, client_id: list[str]) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                buf += chunk
                while (packet := next_packet(buf)) is not None:
                    buf = buf[len(packet):]
                    kind = packet[0] & 0xF0
                    if kind == CONNECT:
                        client_id[0] = connect_client_id(packet)
                    action = self.decide(Packet(kind, from_broker, client_id[0]))
                    if action == "drop":
                        continue
                    if action == "hold":
                        with self._lock:
                            released = self._released
                        self.holding.set()
                        released.wait()
                        self.holding.clear()
                    sink.sendall(packet)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def next_packet(buf: bytes) -> bytes | None:
    """The first whole MQTT packet in ``buf`` (fixed header, variable-length size), or None."""
    size, shift = 0, 0
    for i in range(1, min(len(buf), 5)):
        size |= (buf[i] & 0x7F) << shift
        shift += 7
        if not buf[i] & 0x80:
            end = i + 1 + size
            return buf[:end] if len(buf) >= end else None
    return None


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    """A variable byte integer at ``at``: (value, offset after it)."""
    value, shift = 0, 0
    while True:
        byte = buf[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


def connect_client_id(packet: bytes) -> str:
    """The client id a CONNECT packet (MQTT 3.1.1 or 5) carries."""
    _, at = _varint(packet, 1)  # past the fixed header
    name_len = int.from_bytes(packet[at:at + 2], "big")
    at += 2 + name_len
    level = packet[at]
    at += 1 + 1 + 2  # level, connect flags, keep alive
    if level == 5:
        props, at = _varint(packet, at)
        at += props
    id_len = int.from_bytes(packet[at:at + 2], "big")
    return packet[at + 2:at + 2 + id_len].decode()
