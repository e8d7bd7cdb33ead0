"""``buildpy run -t``: the container gets a terminal of its own, sized as the
caller's, and ``-it`` makes it interactive. The caller's terminal is a pty
made by the test (pty.fork), as a user's terminal would be."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import sys
import termios

import pytest

from tests.conftest import REPO, Buildpy

EXECUTORS = ["runc", "builtin"]


def _run_on_terminal(
    buildpy: Buildpy, args: list[str], typed: bytes = b""
) -> tuple[bytes, int, bool]:
    """Run ``buildpy ARGS`` on a new terminal of 33 rows and 77 columns, type
    ``typed`` into it; (everything it showed, exit code, whether the
    terminal's mode is as before: raw mode was undone)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdio is the new terminal
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
            os.chdir(REPO)
            os.environ["BUILDPY_ROOT"] = str(buildpy.root)
            os.execv(sys.executable, [sys.executable, "-m", "buildpy", *args])
        finally:
            os._exit(127)
    before = termios.tcgetattr(fd)
    try:
        if typed:
            os.write(fd, typed)
        shown = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child and its terminal are gone
                break
            if not chunk:
                break
            shown += chunk
        _, status = os.waitpid(pid, 0)
        return shown, os.waitstatus_to_exitcode(status), termios.tcgetattr(fd) == before
    finally:
        os.close(fd)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_run_t_gives_a_terminal_of_the_callers_size(
    busybox: Buildpy, executor: str
) -> None:
    shown, code, _ = _run_on_terminal(
        busybox,
        ["run", "-t", "--oci-runtime", executor, "busybox", "sh", "-c"]
        + ["tty; stty size; exit 4"],
    )
    assert code == 4, shown
    assert shown.split(b"\r\n")[:2] == [b"/dev/pts/0", b"33 77"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_run_it_is_an_interactive_shell(busybox: Buildpy, executor: str) -> None:
    shown, code, restored = _run_on_terminal(
        busybox,
        ["run", "-it", "--oci-runtime", executor, "busybox", "sh"],
        typed=b"echo hi-$((40+2)); [ -t 0 ] && echo stdin-is-a-tty\rexit 3\r",
    )
    assert code == 3, shown
    assert b"hi-42" in shown and b"stdin-is-a-tty" in shown
    assert restored


def test_run_without_t_has_no_terminal(busybox: Buildpy) -> None:
    shown, code, _ = _run_on_terminal(busybox, ["run", "busybox", "tty"])
    assert (code, shown.strip()) == (1, b"not a tty")
