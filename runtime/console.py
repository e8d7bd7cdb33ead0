"""Terminals for containers (``buildpy run -t``): a pty made inside the
container, its master handed out, and the copying between it and the caller.

Theory of operation
-------------------
The pty must come from the container's own devpts instance, so that the step
sees /dev/pts/0 and its tty name resolves inside the container. So the
container's process opens /dev/ptmx after pivot_root, sends the master to
the outside over a Unix socket (SCM_RIGHTS, as runc's --console-socket does),
makes the slave its controlling terminal and stdio, and execs. Outside,
``relay`` copies the caller's stdin to the master and the master to the
caller's stdout until the master reports EOF or EIO (every slave closed: the
step and its children are gone). While it copies, the caller's terminal is in
raw mode (``raw_terminal``: the container's terminal does the line editing and
echo) and its window size follows the caller's (``copy_winsize`` on SIGWINCH).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import tty
from collections.abc import Iterator

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_CHUNK = 65536


def open_pty() -> tuple[int, str]:
    """(master fd, slave path) of a new pty from /dev/ptmx (the current
    mount namespace's devpts)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    return master, f"/dev/pts/{number}"


def become_terminal_owner(slave_path: str) -> None:
    """Make the pty slave this process's controlling terminal and stdio."""
    os.setsid()
    slave = os.open(slave_path, os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def send_fd(sock: socket.socket, fd: int) -> None:
    socket.send_fds(sock, [b"pty"], [fd])


def receive_fd(sock: socket.socket) -> int:
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    if not fds:
        raise OSError(errno.EBADMSG, "no terminal received from the container")
    return fds[0]


def copy_winsize(source: int, target: int) -> None:
    """Give ``target`` (a pty master) the window size of terminal ``source``."""
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # source is not a terminal: the pty keeps its size


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on ``fd`` while inside, when it is a terminal; restored after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # TCSAFLUSH would drop typed-ahead input
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def relay(master: int, stdin: int, stdout: int) -> None:
    """Copy ``stdin`` to ``master`` and ``master`` to ``stdout`` until the pty
    has no slave left (EIO) or reports EOF. EOF on ``stdin`` stops only the
    input side."""
    sources = [master, stdin]
    while True:
        try:
            ready, _, _ = select.select(sources, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                chunk = os.read(master, _CHUNK)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return
                raise
            if not chunk:
                return
            _write_all(stdout, chunk)
        if stdin in ready:
            try:
                data = os.read(stdin, _CHUNK)
            except OSError:
                data = b""
            if data:
                _write_all(master, data)
            else:
                sources.remove(stdin)


__all__ = [
    "become_terminal_owner",
    "copy_winsize",
    "open_pty",
    "raw_terminal",
    "receive_fd",
    "relay",
    "send_fd",
]
