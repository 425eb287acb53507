"""Certificates for TLS tests, made with the openssl command line: two CAs, server and client certificates.

Shared by the Mosquitto TLS tests (test_security) and the NATS TLS tests (test_nats_security).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path
    other_ca: Path
    server: tuple[Path, Path]  # certificate, key; for localhost and 127.0.0.1
    misnamed: tuple[Path, Path]  # issued by the CA for broker.example only
    client: tuple[Path, Path]


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl(cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _issue(cwd: Path, name: str, ca: str, extensions: str) -> tuple[Path, Path]:
    _openssl(cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    (cwd / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extensions + "\n"
    )
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return cwd / f"{name}.pem", cwd / f"{name}.key"


@contextmanager
def generated_certs() -> Iterator[Certs]:
    """A fresh set in a temporary folder, removed afterwards; skips the test without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    # World-readable: mosquitto reads them after dropping root.
    root = Path(tempfile.mkdtemp(prefix="edge-tls-"))
    root.chmod(0o755)
    try:
        _ca(root, "ca")
        _ca(root, "other-ca")
        server = _issue(root, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        misnamed = _issue(root, "misnamed", "ca", "subjectAltName=DNS:broker.example\nextendedKeyUsage=serverAuth")
        client = _issue(root, "client", "ca", "extendedKeyUsage=clientAuth")
        for f in root.iterdir():
            f.chmod(0o644)
        yield Certs(root, root / "ca.pem", root / "other-ca.pem", server, misnamed, client)
    finally:
        shutil.rmtree(root, ignore_errors=True)
