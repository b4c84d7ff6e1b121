"""A throwaway certificate authority for the local stack's TLS listeners (made with openssl)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path  # PKCS#8, unencrypted
    server_pem: Path  # key then certificate, for Kafka's PEM keystore


def make_certificates(folder: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A CA and a server certificate for ``host`` (an IP address), made once, then reused."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "server.pem"
    )
    if files.server_pem.exists():
        return files

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-subj", "/CN=veilleuse-local-ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (folder / "san.ext").write_text(f"subjectAltName=IP:{host}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "3650", "-extfile", "san.ext",
            "-out", "server.crt")  # fmt: skip
    files.server_pem.write_text(files.server_key.read_text() + files.server_cert.read_text())
    return files
