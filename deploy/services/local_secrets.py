"""Certificates and passwords of the local secure stack (`trainmon services start --secure`).

One private CA signs a server certificate for 127.0.0.1/localhost (Kafka's SASL_SSL listener,
ClickHouse's HTTPS port) and a client certificate (for mTLS). Everything is PEM, made with openssl,
kept under <services home>/secrets (mode 0700, files 0600) and made once: later starts reuse it, so
clients configured with the CA keep working across restarts. Passwords are random, one file each,
which is how every trainmon component reads them (never from argv).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trainmon.deploy.services.base import ServiceError

DAYS = 3650
SUBJECT = "/O=trainmon local stack"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what clients trust (ssl_ca_file)
    server_cert: Path
    server_key: Path  # PKCS#8, unencrypted, 0600
    client_cert: Path
    client_key: Path


def _private_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        raise ServiceError("secure services: openssl is not installed (apt-get install openssl)")
    done = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ServiceError(f"secure services: openssl {args[0]} failed: {done.stderr.strip()[:400]}")


def _signed(directory: Path, name: str, extensions: str) -> tuple[Path, Path]:
    cert, key, request, ext = (directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr",
                               directory / f"{name}.ext")
    if cert.is_file() and key.is_file():
        return cert, key
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    key.chmod(0o600)
    _openssl("req", "-new", "-key", str(key), "-subj", f"{SUBJECT}/CN={name}", "-out", str(request))
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", str(request), "-CA", str(directory / "ca.pem"), "-CAkey",
             str(directory / "ca.key"), "-CAcreateserial", "-days", str(DAYS), "-sha256", "-extfile", str(ext),
             "-out", str(cert))
    request.unlink()
    ext.unlink()
    return cert, key


def ensure_certificates(directory: Path) -> Certificates:
    """The CA and the server and client certificates under `directory`, made if missing."""
    directory = _private_dir(directory)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    if not (ca.is_file() and ca_key.is_file()):
        for stale in directory.glob("*.pem"):  # signed by a CA that is gone
            stale.unlink()
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(ca_key))
        ca_key.chmod(0o600)
        _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", f"{SUBJECT}/CN=trainmon local CA",
                 "-days", str(DAYS), "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca))
    server = _signed(directory, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                     "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n")
    client = _signed(directory, "client", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
    return Certificates(ca, server[0], server[1], client[0], client[1])


def ensure_password(directory: Path, name: str) -> Path:
    """A file holding a random password for `name` (e.g. kafka-trainmon), made if missing."""
    path = _private_dir(directory) / f"{name}.password"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
    return path
