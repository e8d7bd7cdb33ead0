"""The fork server behind ``buildpy serve``: a warm process that forks one child per
command, each child running ``buildpy.cli.main(argv)`` exactly as the embedded CLI
does.

Theory of operation
-------------------
The daemon starts ``python -m buildpy.zygote FD`` with one end of a SOCK_SEQPACKET
socketpair as FD. The zygote imports everything a command needs (the engine, the
frontend with its grammar primed by one parse), writes one byte ``R`` on FD to say it
is ready, then loops: each record on FD is one request, JSON ``{argv, cwd, env,
root}``, carrying three file descriptors with SCM_RIGHTS: the child's stdout, its
stderr (pipe or pty ends) and a status pipe.

The zygote stays single-threaded and never runs Trio, opens no database and holds
no lock, so a fork of it is a clean copy of a freshly started CLI with its imports
done. It forks twice: the middle process forks the child and exits at once, the
zygote reaps the middle process, and the child is adopted by the daemon (a child
subreaper), which reaps it when it ends. The zygote therefore never waits on a
command, and a command that runs for an hour holds nothing of it.

The child is forked before it is needed: one *spare* waits on a socketpair of its
own for the next request, which the zygote passes on to it as it came, and the
zygote forks the next spare at once. A fresh fork shares the zygote's pages until
it writes them, and every object a Python process touches is written (its reference
count): a no-op build in a fresh fork spent a third of its time copying pages. So
the spare, while it waits, makes those pages its own (``MADV_POPULATE_WRITE``, a
MiB at a time) and stops as soon as a request is waiting: the copies are made off
the request's path, or not at all when requests come faster than spares are
made. Which pages: a command, once its exit code is written, notes the spans of
the zygote's pages it wrote (the pagemap's "exclusively mapped" bit), about a
quarter of them for a no-op build, and the next spares copy those; before any
note, every private writable mapping.

The child makes itself a session leader (so a terminal's Ctrl-C reaches only
whoever the daemon signals), puts the client's stdin on 0 when the client passed
it (else /dev/null) and the two output descriptors on 1 and 2, takes the
client's cwd and environment (``BUILDPY_ROOT`` forced to the daemon's root),
writes its pid as a line on the status pipe, runs ``main(argv)``, flushes, and
writes its exit code as the last line. The daemon learns from the
status pipe both whom to signal and when the command ended: a status pipe that
closes without an exit code means the child died (SIGKILL, a crash).
"""

from __future__ import annotations

import array
import ctypes
import errno
import gc
import importlib
import io
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

MAX_REQUEST = 1 << 20  # one request record: argv and environment, in JSON
READY = b"R"
# What the commands import when they run (besides what the parser imports).
WARM_MODULES = (
    "buildpy.commands",
    "buildpy.build",
    "buildpy.engine",
    "buildpy.worker",
    "buildpy.exporters",
    "buildpy.archive",
    "buildpy.cachecmds",
    "buildpy.imagecmds",
    "buildpy.lintcmd",
    "buildpy.prune",
    "buildpy.report",
    "buildpy.run",
    "frontend",
    "runtime",
    "snapshotter",
    "solver",
    "solver.scheduler",
)


def warm_up() -> None:
    """Import what any command imports, and compile the Dockerfile grammar."""
    import buildpy.cli as cli
    import buildpy.client

    # A child never forwards to a daemon, whatever argv or environment it gets.
    buildpy.client.EMBEDDED_ONLY = True
    import buildpy.build

    # What the daemon grants (argv after the socket): in the zygote's memory,
    # which no client's environment or flags can change.
    buildpy.build.DAEMON_GRANTS = frozenset(sys.argv[2:])
    cli.parser()  # built once, for every child; imports the modules it needs
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a module that is there but fails: a bug
                raise
    import frontend

    frontend.parse("FROM scratch\n")
    if threading.active_count() != 1:  # a thread would not survive fork
        raise RuntimeError("the zygote must stay single-threaded")
    # What the zygote holds now lives as long as it does: out of the collector's
    # sight, a child's collection never walks it, and so never copies the
    # zygote's pages (a full collection in a child cost 45 ms, a no-op build 30).
    gc.collect()
    gc.freeze()


def _receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One request record and its file descriptors; None at the end of ``sock``."""
    fds = array.array("i")
    size = socket.CMSG_SPACE(4 * fds.itemsize)
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_REQUEST, size)
    if not data:
        return None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _fork_spare(sock: socket.socket) -> socket.socket:
    """Fork the next spare child; the zygote's end of its socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    middle = os.fork()
    if middle == 0:
        try:
            if os.fork() == 0:
                sock.close()
                ours.close()
                _spare(theirs)  # never returns
        finally:
            os._exit(0)
    theirs.close()
    os.waitpid(middle, 0)
    return ours


def _hand_over(spare: socket.socket, data: bytes, fds: list[int]) -> None:
    rights = array.array("i", fds)
    spare.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])


def serve(sock: socket.socket) -> None:
    """Hand each request to the spare child, and fork the next spare, until the
    daemon closes its end."""
    spare = _fork_spare(sock)
    try:
        while True:
            try:
                received = _receive(sock)
            except InterruptedError:
                continue
            if received is None:
                return
            data, fds = received
            try:
                if len(fds) in (3, 4):  # else not the daemon's request: dropped
                    try:
                        _hand_over(spare, data, fds)
                    except OSError:  # the spare died (killed by hand): another
                        spare.close()
                        spare = _fork_spare(sock)
                        _hand_over(spare, data, fds)
            finally:
                # Closed before the next fork: a spare holding a command's pipes
                # would keep the daemon from seeing that command end.
                for fd in fds:
                    os.close(fd)
                spare.close()
                spare = _fork_spare(sock)
    finally:
        spare.close()  # the spare sees the end, and exits


def _spare(sock: socket.socket) -> None:
    """A child before its request: copy pages while idle, then run the request."""
    code = 0
    try:
        _set_name(b"buildpy-spare")
        _own_pages(sock)
        received = _receive(sock)
        if received is None:  # the zygote is gone: no request will come
            os._exit(0)
        data, fds = received
        sock.close()
        if len(fds) not in (3, 4):
            os._exit(1)
        _child(json.loads(data), *fds)  # never returns
    except BaseException:
        code = 1
    os._exit(code)


MADV_POPULATE_WRITE = 23  # <linux/mman.h>, Linux 5.14
_POPULATE_STEP = 1 << 20  # a request waits for one step at most
_PAGE = os.sysconf("SC_PAGE_SIZE")
_EXCLUSIVE = 1 << 56  # a pagemap entry's "page exclusively mapped" bit
_Spans = list[tuple[int, int]]  # sorted, disjoint [start, end) address ranges
# The file where commands note which of the zygote's pages they wrote (set by
# main); the zygote's writable mappings as this process was forked with them;
# whether this process copied pages before its request came.
_hot_file: str | None = None
_regions: _Spans = []
_populated = False


def _writable_regions() -> _Spans:
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split(None, 2)[:2]
            if perms[1] == "w" and perms[3] == "p":
                start, end = (int(x, 16) for x in span.split("-"))
                regions.append((start, end))
    return regions


def _read_spans() -> _Spans:
    """The spans commands noted (``_note_written_pages``); none before the first."""
    if _hot_file is None:
        return []
    try:
        with open(_hot_file) as f:
            return [(int(a), int(b)) for a, b in (line.split() for line in f)]
    except (OSError, ValueError):
        return []


def _merge(spans: _Spans) -> _Spans:
    merged: _Spans = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _own_pages(sock: socket.socket) -> None:
    """Copy the zygote's pages that commands write into this process, a step at
    a time, until a request is waiting on ``sock`` (or the kernel cannot)."""
    global _regions, _populated
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    try:
        _regions = _writable_regions()
    except OSError:
        return
    for start, end in _read_spans():
        for at in range(start, end, _POPULATE_STEP):
            if select.select([sock], [], [], 0)[0]:
                return
            size = min(_POPULATE_STEP, end - at)
            if madvise(at, size, MADV_POPULATE_WRITE) != 0:
                if ctypes.get_errno() == errno.EINVAL:  # a kernel before 5.14
                    return
                break  # a span that cannot be populated (a guard page): the next
            _populated = True


def _written_spans() -> _Spans:
    """The spans of the zygote's pages this process has its own copies of: their
    pagemap entries are exclusively mapped."""
    spans: _Spans = []
    with open("/proc/self/pagemap", "rb") as pagemap:
        for start, end in _regions:
            pagemap.seek(start // _PAGE * 8)
            entries = array.array("Q", pagemap.read((end - start) // _PAGE * 8))
            run = -1
            for i, entry in enumerate(entries):
                if entry & _EXCLUSIVE:
                    if run < 0:
                        run = i
                elif run >= 0:
                    spans.append((start + run * _PAGE, start + i * _PAGE))
                    run = -1
            if run >= 0:
                spans.append((start + run * _PAGE, end))
    return spans


def _note_written_pages() -> None:
    """After a command: add the zygote's pages it wrote to the note that the next
    spares read, when it wrote pages the note lacks. Only a process that copied
    nothing in advance can tell which pages its command wrote: the first
    commands, and those that came faster than spares were made (then once a
    minute: a burst of commands would read the same pages again and again)."""
    if _hot_file is None or not _regions or _populated:
        return
    try:
        try:
            if time.time() - os.stat(_hot_file).st_mtime < 60:
                return
        except FileNotFoundError:
            pass
        noted = _read_spans()
        spans = _merge(noted + _written_spans())
        if spans == noted:
            return
        partial = f"{_hot_file}.{os.getpid()}"
        with open(partial, "w") as f:
            f.writelines(f"{start} {end}\n" for start, end in spans)
        os.replace(partial, _hot_file)
    except (OSError, ValueError):
        pass


def _text_stream(fd: int, errors: str) -> io.TextIOWrapper:
    tty = os.isatty(fd)
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding="utf-8",
        errors=errors,
        line_buffering=tty,
        write_through=tty,
    )


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def images_json(argv: list[str]) -> int:
    """``GET /images/json``: the local store as docker's image list (JSON)."""
    from buildpy.engine import Engine

    out = []
    with Engine.open(None) as engine:
        by_digest: dict[str, dict[str, Any]] = {}
        for record in engine.images.list():
            entry = by_digest.get(record.digest)
            if entry is None:
                manifest = engine.images.manifest(record.digest)
                entry = {
                    "Id": manifest["config"]["digest"],
                    "Digest": record.digest,
                    "RepoTags": [],
                    "Created": int(record.created),
                    "Size": sum(int(layer["size"]) for layer in manifest["layers"]),
                }
                by_digest[record.digest] = entry
                out.append(entry)
            entry["RepoTags"].append(record.name)
    json.dump(out, sys.stdout)
    return 0


def remote_call(name: str) -> Any:
    """A call of buildpy/remotectx.py (the context over TCP), imported when used."""

    def call(argv: list[str]) -> int:
        from buildpy import remotectx

        return int(getattr(remotectx, name.replace("-", "_"))(argv))

    return call


CALLS: dict[str, Any] = {"images": images_json}
CALLS.update({n: remote_call(n) for n in ("context-plan", "context-needs")})
CALLS["remote-build"] = remote_call("remote-build")


def _set_name(name: bytes) -> None:
    """The process name ps shows (15 bytes at most), so children can be told apart
    from the zygote they were forked from."""
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def _child(
    request: dict[str, Any], out: int, err: int, status: int, stdin: int = -1
) -> None:
    """Run the request's command; ``stdin``: the client's, when it passed it."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if stdin < 0:
            stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (stdin, out, err):
            if fd > 2:
                os.close(fd)
        sys.stdin = io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "r", closefd=False))
        )
        sys.stdout = _text_stream(1, "strict")
        sys.stderr = _text_stream(2, "backslashreplace")
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["BUILDPY_ROOT"] = request["root"]
        os.environ.pop("BUILDPY_HOST", None)
        os.chdir(request["cwd"])
        os.write(status, f"{os.getpid()}\n".encode())
        _set_name(b"buildpy-child")
        from buildpy.cli import main

        call = CALLS.get(request.get("call") or "", main)
        try:
            code = call(request["argv"])
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
            code = 1
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            code = code & 0xFF if isinstance(code, int) else 1
            os.write(status, f"{code}\n".encode())
            _note_written_pages()  # the command has ended for its client
        finally:
            os._exit(code)


def main() -> None:
    # Ctrl-C on a foreground `buildpy serve` reaches its whole process group; the
    # daemon decides what to cancel, so the zygote itself ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    _set_name(b"buildpy-zygote")
    warm_up()
    global _hot_file
    hot_dir = tempfile.mkdtemp(prefix="buildpy-zygote-")
    _hot_file = os.path.join(hot_dir, "written-pages")
    sock.sendall(READY)
    try:
        serve(sock)
    finally:
        shutil.rmtree(hot_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
