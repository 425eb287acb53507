"""A NATS operator, account and user made offline with nkeys, for a server in operator mode (what `nsc` writes).

Each entity is an NKey (ed25519); each JWT is its claims signed by the key above it
(operator -> account -> user), with header {"typ": "JWT", "alg": "ed25519-nkey"}. The
server trusts the operator JWT and is preloaded with the account JWTs (resolver MEMORY).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys

UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
             "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Key:
    seed: bytes

    @property
    def public(self) -> str:
        return str(nkeys.from_seed(bytearray(self.seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def new_key(prefix: int) -> Key:
    return Key(bytes(nkeys.encode_seed(os.urandom(32), prefix)))


def jwt(issuer: Key, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject,
                              "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


@dataclass(frozen=True)
class Operator:
    """An operator with a system account and one account (JetStream on) whose users ``user_creds`` makes."""

    key: Key
    system: Key
    account: Key

    @classmethod
    def make(cls) -> Operator:
        return cls(new_key(nkeys.PREFIX_BYTE_OPERATOR), new_key(nkeys.PREFIX_BYTE_ACCOUNT),
                   new_key(nkeys.PREFIX_BYTE_ACCOUNT))

    def server_config(self) -> str:
        """The lines of nats-server's config that trust this operator."""
        operator = jwt(self.key, self.key.public, "edge-op", {"type": "operator", "system_account": self.system.public})
        system = jwt(self.key, self.system.public, "SYS", {"type": "account", "limits": {**UNLIMITED, "mem_storage": 0,
                                                                                         "disk_storage": 0, "streams": 0, "consumer": 0}})
        account = jwt(self.key, self.account.public, "EDGE", {"type": "account", "limits": UNLIMITED})
        return (f'operator: "{operator}"\nsystem_account: {self.system.public}\nresolver: MEMORY\n'
                f'resolver_preload: {{ {self.system.public}: "{system}", {self.account.public}: "{account}" }}')

    def user_creds(self, name: str, signer: Key | None = None) -> str:
        """A creds file's text for a new user of the account (signed by ``signer``: another key makes it invalid)."""
        user = new_key(nkeys.PREFIX_BYTE_USER)
        token = jwt(signer or self.account, user.public, name,
                    {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
        return (f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
                f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
