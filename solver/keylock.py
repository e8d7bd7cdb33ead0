"""Locks per cache key, shared by every build process on one store.

Theory of operation
-------------------
Inside one solve, a flight per digest makes a vertex run once. Across solves,
in one process or several, two locks per cache key do, each a file under one
directory (the store's ``locks/``), locked with flock(2):

- ``<hex>.run``, exclusive, held while the key's vertex executes and its
  record is written. A second build that misses the same key waits for it,
  then looks the record up again: it finds the first build's result and
  reports the step cached instead of running it.
- ``<hex>.use``, shared, taken before a build looks up the key's record and
  kept until the solve ends. Eviction (buildpy prune, --max-storage) takes it
  exclusive and without waiting, so a record that a running build holds is
  never removed under it.

flock belongs to the open file, so two solves in one process exclude each
other as two processes do, and the kernel releases a dead holder's locks when
it exits: a crashed build never blocks another. Waiting polls (non-blocking
attempts, backing off to ``max_poll`` seconds) so that it stays cancellable by
Trio; no thread sits in a blocking flock that Ctrl-C could not interrupt.

An evicter unlinks the lock files it holds. A process that opened the file just
before would then lock an unlinked inode, so every acquisition checks that the
path still names the inode it locked, and starts over when it does not.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

RUN = "run"
USE = "use"


class KeyLocks:
    """The lock files of cache keys under ``directory`` (created on first use)."""

    def __init__(self, directory: Path, *, max_poll: float = 0.01) -> None:
        self.directory = directory
        self.max_poll = max_poll
        self._made = False  # the directory exists (a rebuild takes a lock per step)

    def path(self, key: str, kind: str) -> Path:
        return self.directory / f"{key.removeprefix('sha256:')}.{kind}"

    def try_lock(self, key: str, kind: str, *, shared: bool) -> int | None:
        """The fd holding the lock, or None when another holder has it."""
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        path = self.path(key, kind)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(
                    fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
                )
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            if _same_file(fd, path):
                return fd
            os.close(fd)  # an evicter unlinked it meanwhile: lock the new file

    async def lock(
        self,
        key: str,
        kind: str,
        *,
        shared: bool,
        on_wait: Callable[[], None] | None = None,
    ) -> int:
        """Wait for the lock and return the fd that holds it; ``on_wait`` is
        called once if the lock is not free at first. A waiter tries again every
        ``max_poll`` seconds at most, so that it learns soon that the run it
        waits for has ended: ten waiters polling every 10 ms cost about 1% of
        a core."""
        delay = 0.005
        while (fd := self.try_lock(key, kind, shared=shared)) is None:
            if on_wait is not None:
                on_wait()
                on_wait = None
            await trio.sleep(delay)
            delay = min(delay * 2, self.max_poll)
        return fd

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)  # closing the last fd of the open file releases the flock

    @contextmanager
    def evicting(self, key: str) -> Iterator[bool]:
        """Hold both locks of ``key`` exclusively, without waiting: yields False
        (and holds nothing) when a build holds or runs the key. After a True,
        the lock files are removed before they are released."""
        use = self.try_lock(key, USE, shared=False)
        if use is None:
            yield False
            return
        run = self.try_lock(key, RUN, shared=False)
        if run is None:
            self.release(use)
            yield False
            return
        try:
            yield True
        finally:
            for kind in (USE, RUN):
                self.path(key, kind).unlink(missing_ok=True)
            self.release(run)
            self.release(use)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
