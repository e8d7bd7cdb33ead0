"""The thin client: runs a command in a ``buildpy serve`` daemon instead of in-process.

Standard library only, and imported by ``buildpy.cli.main`` before anything else, so
that a command sent to the daemon costs the interpreter's start-up and no more: the
daemon's warm child parses the flags and runs the engine (docs/api.md, ``POST
/cli``). What the child writes to its stdout and stderr comes back in docker's
multiplexed frames and goes to ours; the last frame is its exit code, which becomes
ours. So a command gives the same output and exit code either way, by construction.

When the daemon is used (``forward_target``): ``--addr ADDR`` or ``$BUILDPY_HOST``
name it; else, when neither ``--root`` nor ``$BUILDPY_ROOT`` is given and the
default socket exists, that one. ``buildpy serve`` never forwards, nor ``run -t``:
the daemon's child reads the client's stdin, passed with the request (so ``run
-i`` is sent), but a container's terminal needs more than that.

Ctrl-C does what it does embedded: the client half-closes its connection, the
daemon sends SIGINT to the child, and the child's own clean-up output and exit code
(130) still come back. A second Ctrl-C leaves at once (the daemon still interrupts
the child, and kills it after a grace period).
"""

from __future__ import annotations

import _socket
import os
import struct
import sys

# The typing names are for readers and checkers only: importing typing costs the
# client a few milliseconds at every start. So did the json and socket modules (re,
# selectors, enum: 8 ms of the 24.5 ms of CPU a command cost): the client uses the
# C parts beneath them, _json (json_dumps below) and _socket.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, BinaryIO

DEFAULT_ADDR = "unix:///run/buildpy/buildpy.sock"
API_VERSION = "1"

STDOUT, STDERR, EXIT = 1, 2, 3
FRAME_HEADER = struct.Struct(">BxxxI")  # stream, 3 zero bytes, payload length
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"

EXIT_USAGE = 2  # the values of buildpy.errors, not imported: it stays cheap
EXIT_INFRA = 4
EXIT_INTERRUPTED = 130

EMBEDDED_ONLY = False  # set in the daemon's children: they never forward

# Environment the command must not see from the client: the daemon sets its own.
_CLIENT_ONLY = ("BUILDPY_HOST", "BUILDPY_ROOT", "LISTEN_FDS", "LISTEN_PID")


class AddressError(ValueError):
    """An --addr or BUILDPY_HOST this client cannot use."""


def socket_path(addr: str) -> str:
    """The Unix socket path of ``unix:///path`` (or of a bare absolute path)."""
    if addr.startswith("unix://"):
        path = addr[len("unix://") :]
    elif addr.startswith("/"):
        path = addr
    elif addr.startswith(("tcp://", "https://")):
        raise AddressError(f"daemon address {addr!r}: not a Unix socket")
    else:
        raise AddressError(f"daemon address {addr!r}: expected unix:///PATH")
    if not path.startswith("/"):
        raise AddressError(f"daemon address {addr!r}: the socket path is not absolute")
    return path


def encode_frame(stream: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(stream, len(payload)) + payload


def json_dumps(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, by the C encoder that json
    itself uses, without importing the json package; the package where that
    encoder is missing (another Python than CPython)."""
    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:
        import json

        return json.dumps(value, separators=(",", ":"))
    # The arguments json.encoder passes: markers, default, the string encoder,
    # indent, the two separators, sort_keys, skipkeys, allow_nan.
    encoder = make_encoder(
        None, None, encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return "".join(encoder(value, 0))


# --- choosing the path ---------------------------------------------------------


def _split_global(argv: Sequence[str]) -> tuple[list[str], str | None, bool, str]:
    """argv without --addr, the --addr value, whether --root was given, the command.

    Tokens after ``--`` are left alone: they belong to the command (``run``).
    """
    rest: list[str] = []
    addr: str | None = None
    root = False
    command = ""
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            rest.extend(tokens[i:])
            break
        if token == "--addr" and i + 1 < len(tokens):
            addr = tokens[i + 1]
            i += 2
            continue
        if token.startswith("--addr="):
            addr = token.partition("=")[2]
            i += 1
            continue
        if token == "--root" or token.startswith("--root="):
            root = True
        elif not command and not token.startswith("-"):
            previous = tokens[i - 1] if i else ""
            if previous != "--root":
                command = token
        rest.append(token)
        i += 1
    return rest, addr, root, command


def run_flag(argv: Sequence[str], command: str, short: str, long: str) -> bool:
    """Whether a ``run`` command line gives the flag ``-SHORT``/``--LONG``
    (alone or among other one-letter flags, as ``-it``)."""
    if command != "run":
        return False
    for token in argv:
        if token == "--":
            break
        if token in (f"-{short}", f"--{long}") or (
            len(token) > 2
            and token[0] == "-"
            and token[1] != "-"
            and short in token[1:]
            and token[1:].isalpha()
        ):
            return True
    return False


def _with_terminal(argv: Sequence[str], command: str) -> bool:
    """``run -t``: the container's terminal stays in-process. (``run -i``
    alone is sent: the daemon's command reads the stdin passed to it.)"""
    return run_flag(argv, command, "t", "tty")


def forward_target(argv: Sequence[str]) -> tuple[str, list[str], bool] | None:
    """(address, argv to send, explicit) when the command goes to a daemon, else
    None. ``explicit`` is False when only the default socket's presence chose it."""
    if EMBEDDED_ONLY:
        return None
    rest, addr, root_flag, command = _split_global(argv)
    if command == "serve" or _with_terminal(rest, command):
        return None
    if addr is None:
        addr = os.environ.get("BUILDPY_HOST") or None
    if addr is not None:
        return addr, rest, True
    if root_flag or os.environ.get("BUILDPY_ROOT"):
        return None
    try:
        if os.path.exists(socket_path(DEFAULT_ADDR)):
            return DEFAULT_ADDR, rest, False
    except AddressError:
        pass
    return None


def resolve_build_args(argv: Sequence[str]) -> list[str]:
    """``--build-arg NAME`` takes NAME's value from the client's environment."""
    out: list[str] = []
    take_next = False
    for token in argv:
        if token == "--":
            take_next = False
        if take_next:
            if "=" not in token:
                token = f"{token}={os.environ.get(token, '')}"
            take_next = False
        elif token == "--build-arg":
            take_next = True
        elif token.startswith("--build-arg=") and "=" not in token[12:]:
            name = token[12:]
            token = f"--build-arg={name}={os.environ.get(name, '')}"
        out.append(token)
    return out


# --- talking to the daemon -----------------------------------------------------
#
# The exchange is one HTTP/1.0 request and its answer, read to the end of the
# connection, on a plain socket: http.client would cost the client 33 ms of imports
# (ssl and the email package) at every start, more than the rest of a no-op
# rebuild's client side together. HTTP/1.0 keeps the answer unchunked, so what is
# read here is a status line, header lines that this client does not need, and the
# frames. Programs that want more of HTTP use any client they like (docs/api.md).

_MAX_LINE = 65536


def cli_request(body: dict[str, Any], host: str = "localhost") -> bytes:
    """``POST /cli`` with ``body`` as JSON, as bytes to send."""
    data = json_dumps(body).encode()
    head = (
        f"POST /cli HTTP/1.0\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _read_head(reader: BinaryIO) -> int:
    """The status code of the answer; the header lines are skipped. Raises
    ConnectionError when the connection ends first or the peer is no HTTP server."""
    line = reader.readline(_MAX_LINE)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError("no HTTP answer")
    while reader.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
        pass
    return int(parts[1])


def _terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return size.lines, size.columns
    except (OSError, ValueError, AttributeError):
        return 0, 0


def tty_state() -> dict[str, Any]:
    """The ``tty`` member of a ``POST /cli`` body: which of our streams are
    terminals, and the terminal's size."""
    return {
        "stdout": _terminal(sys.stdout),
        "stderr": _terminal(sys.stderr),
        "size": list(_size()),
    }


def _lost(addr: str) -> int:
    print(
        f"ERROR: lost the connection to the buildpy daemon at {addr}", file=sys.stderr
    )
    return EXIT_INFRA


def _pump(reader: BinaryIO, out: BinaryIO, err: BinaryIO) -> int | None:
    """Copy frames to out/err until the exit frame; None when the stream ends first."""
    while True:
        header = reader.read(FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            return None
        stream, length = FRAME_HEADER.unpack(header)
        payload = reader.read(length)
        if len(payload) < length:
            return None
        if stream == EXIT:
            return int(payload.decode().strip())
        target = out if stream == STDOUT else err
        target.write(payload)
        target.flush()


def converse(
    sock: _socket.socket,
    request: bytes,
    addr: str,
    reader: BinaryIO | None = None,
    stdin: int | None = None,
) -> int:
    """Send ``request`` (``cli_request``) on a connected socket, plain or TLS, and
    copy the command's frames to our streams; its exit code. ``reader``: what the
    answer is read from when that is not the socket's bytes themselves (TLS); it
    is closed here. Ctrl-C closes our half of the connection, which makes the
    daemon interrupt the command; its clean-up output and exit code still come
    back, as when it runs embedded. ``stdin``: a descriptor sent with the
    request (SCM_RIGHTS, on a Unix socket), which the command reads as its
    stdin. Raises OSError (ConnectionError among them) when the connection
    fails."""
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    sys.stdout.flush()
    sys.stderr.flush()
    if reader is None:  # a plain socket's descriptor reads as a file does
        reader = open(sock.fileno(), "rb", closefd=False)
    status = None
    try:
        try:
            if stdin is not None:
                rights = struct.pack("i", stdin)
                ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)]
                request = request[sock.sendmsg([request], ancillary) :]
            if request:
                # Only what is left: a quick command can be answered, and the
                # connection closed, before an empty send, which fails (EPIPE).
                sock.sendall(request)
            status = _read_head(reader)
            if status != 200:
                message = reader.read().decode(errors="replace").strip()
                print(
                    f"ERROR: the buildpy daemon at {addr}: {message}", file=sys.stderr
                )
                return EXIT_INFRA
            code = _pump(reader, out, err)
        except KeyboardInterrupt:
            code = None
            try:
                # The plain socket's shutdown: on TLS, SSLSocket.shutdown would
                # drop the state that the rest of the answer still needs.
                _socket.socket.shutdown(sock, _socket.SHUT_WR)
                if status is None:
                    status = _read_head(reader)
                if status == 200:
                    code = _pump(reader, out, err)
            except (KeyboardInterrupt, OSError, ValueError):
                code = None
            if code is None:
                print("buildpy: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
    finally:
        reader.close()
    return _lost(addr) if code is None else code


def _stdin() -> int | None:
    """Our stdin's descriptor, when there is one: the daemon's child reads it
    as its own (``build -f -``), so that a command reads the same either way."""
    try:
        os.fstat(0)
    except OSError:
        return None
    return 0


def run_cli(addr: str, argv: Sequence[str], *, explicit: bool = True) -> int | None:
    """Run ``buildpy ARGV`` in the daemon at ``addr``; its exit code. None when the
    default socket (``explicit`` False) refuses connections: a stale socket of a
    daemon that is gone, and the caller runs the command in-process instead."""
    if addr.startswith("tcp://"):  # with TLS: buildpy/remoteclient.py
        from buildpy import remoteclient

        return remoteclient.run_cli(addr, argv)
    try:
        path = socket_path(addr)
    except AddressError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_USAGE
    body = {
        "argv": resolve_build_args(argv),
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k not in _CLIENT_ONLY},
        "tty": tty_state(),
    }
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            if not explicit:
                return None
            reason = exc.strerror or str(exc)
            print(
                f"ERROR: cannot connect to the buildpy daemon at {addr}: {reason}",
                file=sys.stderr,
            )
            return EXIT_INFRA
        try:
            return converse(sock, cli_request(body), addr, stdin=_stdin())
        except (OSError, ValueError):
            return _lost(addr)
    finally:
        sock.close()
