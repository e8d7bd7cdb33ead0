"""Locks per cache key, shared by every build process on one store.

Theory of operation
-------------------
Inside one solve, a flight per digest makes a vertex run once. Across solves,
in one process or several, two locks per cache key do, each a file under one
directory (the store's ``locks/``), locked with flock(2):

- ``<hex>.run``, exclusive, held while the key's vertex executes and its
  record is written. A second build that misses the same key waits for it
  shared, so that all waiters wake together when it is released, then looks
  the record up again: it finds the first build's result and reports the step
  cached instead of running it. Only when there is no record does it take the
  lock exclusive and run the step itself.
- ``<hex>.use``, shared, taken before a build looks up the key's record and
  kept until the solve ends. Eviction (buildpy prune, --max-storage) takes it
  exclusive and without waiting, so a record that a running build holds is
  never removed under it.

flock belongs to the open file, so two solves in one process exclude each
other as two processes do, and the kernel releases a dead holder's locks when
it exits: a crashed build never blocks another. A waiter sits in a blocking
flock in a thread of its own, so that it costs nothing while it waits and
wakes the moment the holder is done (polling every 10 ms cost each waiter 2%
of a core). Trio abandons that thread when the wait is cancelled; the thread
then closes the file as soon as it has the lock, and a thread still blocked
when the process ends is a daemon thread, which does not hold the exit up.
The threads have a limiter of their own, with no limit: a solve waiting on
many keys that another solve in the same process holds must never take the
threads that solve needs to finish.

An evicter unlinks the lock files it holds. A process that opened the file just
before would then lock an unlinked inode, so every acquisition checks that the
path still names the inode it locked, and starts over when it does not.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from trio.lowlevel import RunVar

RUN = "run"
USE = "use"

_WAITERS: RunVar[trio.CapacityLimiter] = RunVar("keylock_waiters")


class KeyLocks:
    """The lock files of cache keys under ``directory`` (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made = False  # the directory exists (a rebuild takes a lock per step)

    def path(self, key: str, kind: str) -> Path:
        return self.directory / f"{key.removeprefix('sha256:')}.{kind}"

    def try_lock(self, key: str, kind: str, *, shared: bool) -> int | None:
        """The fd holding the lock, or None when another holder has it."""
        return self._acquire(key, kind, shared=shared, wait=False)

    async def lock(self, key: str, kind: str, *, shared: bool) -> int:
        """Wait for the lock and return the fd that holds it."""
        fd = self.try_lock(key, kind, shared=shared)
        if fd is not None:
            return fd
        waiter = _Waiter(lambda: self._acquire(key, kind, shared=shared, wait=True))
        try:
            return await trio.to_thread.run_sync(
                waiter.wait, abandon_on_cancel=True, limiter=_waiters()
            )
        except BaseException:
            waiter.abandon()
            raise

    def _acquire(self, key: str, kind: str, *, shared: bool, wait: bool) -> int | None:
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        path = self.path(key, kind)
        how = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, how if wait else how | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, path):
                return fd
            os.close(fd)  # an evicter unlinked it meanwhile: lock the new file

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


class _Waiter:
    """A blocking acquisition in a thread that Trio may abandon: whichever of
    the thread getting the lock and the wait being abandoned comes second
    closes the file, so an abandoned lock is never kept."""

    def __init__(self, acquire: Callable[[], int | None]) -> None:
        self._acquire = acquire
        self._guard = threading.Lock()
        self._abandoned = False
        self._fd: int | None = None

    def wait(self) -> int:
        fd = self._acquire()
        assert fd is not None  # a blocking acquisition returns a lock or raises
        with self._guard:
            if self._abandoned:
                os.close(fd)
            else:
                self._fd = fd
        return fd

    def abandon(self) -> None:
        with self._guard:
            self._abandoned = True
            if self._fd is not None:
                os.close(self._fd)  # got it as the wait was cancelled: drop it
                self._fd = None


def _waiters() -> trio.CapacityLimiter:
    """The threads that wait for locks, one per waiting key, in this run."""
    try:
        return _WAITERS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(math.inf)
        _WAITERS.set(limiter)
        return limiter
