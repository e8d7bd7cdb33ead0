"""``tcp://HOST:PORT`` daemon addresses and their TLS certificates, as dockerd's
``--tlsverify``: the daemon requires a client certificate signed by its CA, the
client verifies the daemon's certificate against the same CA.

Standard library only: the thin client imports this module.

Where the client takes its files from, first found wins: the ``--tlscacert``,
``--tlscert``, ``--tlskey`` flags; else ``$BUILDPY_CERT_PATH/{ca,cert,key}.pem``
(as ``DOCKER_CERT_PATH``). TCP without a CA is refused by both sides: over TCP
anyone who can connect can run builds as root.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from typing import NamedTuple

TLS_FLAGS = ("--tlscacert", "--tlscert", "--tlskey")
_FILES = {"--tlscacert": "ca.pem", "--tlscert": "cert.pem", "--tlskey": "key.pem"}


class TLSConfigError(ValueError):
    """A tcp:// address or TLS file the user gave that cannot be used."""


class TLSFiles(NamedTuple):
    """The PEM files of one side: the CA that signs the other side's
    certificates, and this side's own certificate and key (None: none)."""

    ca: str
    cert: str | None = None
    key: str | None = None


def is_tcp(addr: str) -> bool:
    return addr.startswith("tcp://")


def parse_tcp(addr: str) -> tuple[str, int]:
    """HOST and PORT of ``tcp://HOST:PORT`` (``[::1]`` for IPv6)."""
    rest = addr[len("tcp://") :].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise TLSConfigError(f"daemon address {addr!r}: expected tcp://HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def split_tls_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv without the TLS flags (before ``--``), and their values."""
    rest: list[str] = []
    values: dict[str, str] = {}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            rest.extend(tokens[i:])
            break
        name, eq, value = token.partition("=")
        if name in TLS_FLAGS:
            if eq:
                values[name] = value
                i += 1
                continue
            if i + 1 < len(tokens):
                values[name] = tokens[i + 1]
                i += 2
                continue
        rest.append(token)
        i += 1
    return rest, values


def client_files(flags: dict[str, str], env: dict[str, str]) -> TLSFiles:
    """The client's files from its flags, else from ``$BUILDPY_CERT_PATH``."""
    chosen = dict(flags)
    cert_path = env.get("BUILDPY_CERT_PATH")
    if cert_path:
        for flag, name in _FILES.items():
            path = os.path.join(cert_path, name)
            if flag not in chosen and os.path.exists(path):
                chosen[flag] = path
    return files_from(chosen, side="client")


def files_from(values: dict[str, str | None], *, side: str) -> TLSFiles:
    """Checked TLS files: a CA is required, a certificate comes with its key."""
    ca, cert, key = (values.get(flag) for flag in TLS_FLAGS)
    if not ca:
        how = (
            "--tlscacert, --tlscert and --tlskey"
            if side == "daemon"
            else "--tlscacert, --tlscert and --tlskey, or BUILDPY_CERT_PATH"
        )
        raise TLSConfigError(
            f"TCP without TLS is refused: the {side} needs {how} "
            "(docs/api.md, 'TCP with TLS')"
        )
    if bool(cert) != bool(key):
        raise TLSConfigError("--tlscert and --tlskey go together: give both")
    if side == "daemon" and not cert:
        raise TLSConfigError("the daemon needs its own --tlscert and --tlskey")
    for path in (ca, cert, key):
        if path and not os.path.isfile(path):
            raise TLSConfigError(f"TLS file {path} does not exist")
    return TLSFiles(ca=str(ca), cert=cert or None, key=key or None)


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The daemon's side: its certificate, and client certificates required and
    verified against the CA."""
    assert files.cert is not None and files.key is not None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files.ca)
        ctx.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load the daemon's TLS files: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """The client's side: the daemon's certificate verified (name included)
    against the CA, and the client's own certificate when it has one."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
        if files.cert and files.key:
            ctx.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load the client's TLS files: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


__all__ = [
    "TLS_FLAGS",
    "TLSConfigError",
    "TLSFiles",
    "client_context",
    "client_files",
    "files_from",
    "is_tcp",
    "parse_tcp",
    "server_context",
    "split_tls_flags",
]
