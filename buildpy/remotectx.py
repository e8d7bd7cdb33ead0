"""The daemon over ``tcp://HOST:PORT`` with TLS client certificates, and the build
context sent over the wire: only the files the build reads, only those whose
content the daemon lacks (docs/api.md, "The context over TCP").

Theory of operation
-------------------
``serve_tcp`` listens on TCP; each connection is a TLS stream that must present a
client certificate signed by the daemon's CA (``buildpy.tlsaddr``), refused with
one log line otherwise. A connection carries one *session*: the requests of one
thin client's command, in order (buildpy/remoteclient.py says which). Commands run
as over the Unix socket, in children of the zygote, but with the daemon's own
environment (plus a few of the client's variables: ``remoteclient.PASS_ENV``) and
``/`` as working directory, since the client's paths are not on this machine.

A build's context lives in ``FileStore`` under ``ROOT/remote``:

    content/<hex>                  each file content the daemon has, by sha256,
                                   verified when it was received, never changed
    variants/<hh>/<hex>-<mode>-<mtime_ns>
                                   that content with a mode and an mtime: made
                                   once by copying, never changed after
    sessions/<id>/context/         one build's materialised context
    sessions/<id>/dockerfile/NAME  its Dockerfile (and NAME.dockerignore)

Materialising hard-links each file from its variant, so an unchanged tree costs
no copy. A link shares its inode, so a variant never changes after it is made
(mode and mtime are in its name), and one build links a variant once: a second
entry with the same content and metadata gets a copy, or the two would become
hard links of each other in the COPY's layer. Entries are created parents
first, each under a directory the session itself made, so no symlink a client
sends can redirect a write. The session directory is removed when its
connection ends, whatever happened; the build's context checksum records of
it are removed by the child when the build ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import h11
import trio

from buildpy.daemon import (
    MAX_BODY,
    STOPPED,
    DaemonError,
    _ConnectionDone,
    _HttpError,
    _json_body,
    _send_json,
)
from buildpy.remoteclient import PASS_ENV
from buildpy.tlsaddr import TLSFiles, parse_tcp, server_context

if TYPE_CHECKING:
    import hashlib

    from buildpy.daemon import Daemon

MAX_ENTRIES_BODY = 512 << 20  # the entry list of a very large context
HANDSHAKE_TIMEOUT = 30.0
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR)
_TYPES += (stat.S_IFBLK,)


class ContextSyncError(DaemonError):
    """A context a client sent cannot be materialised: the client's fault."""


# --- the content-addressed file store -----------------------------------------------


class FileStore:
    """Files of remote contexts, by content (see the theory above)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.content = root / "content"
        self.variants = root / "variants"
        self.sessions = root / "sessions"
        self.tmp = root / "tmp"

    def init(self) -> None:
        for d in (self.content, self.variants, self.sessions, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        # Sessions and partial files of a daemon that was killed.
        for leftover in (self.sessions, self.tmp):
            for path in leftover.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def has(self, digest: str) -> bool:
        return (self.content / digest.removeprefix("sha256:")).exists()

    def new_file(self) -> tuple[Path, Any]:
        path = self.tmp / uuid.uuid4().hex
        return path, open(path, "wb")

    def commit(self, tmp: Path, hexdigest: str) -> None:
        os.chmod(tmp, 0o444)
        os.replace(tmp, self.content / hexdigest)

    def variant(self, hexdigest: str, mode: int, mtime_ns: int) -> Path:
        """The content with this mode and mtime, made once."""
        path = self.variants / hexdigest[:2] / f"{hexdigest}-{mode:o}-{mtime_ns}"
        if not path.exists():
            source = self.content / hexdigest
            if not source.exists():
                raise ContextSyncError(f"the daemon lacks sha256:{hexdigest}")
            path.parent.mkdir(exist_ok=True)
            tmp = self.tmp / uuid.uuid4().hex
            try:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, mode)
                os.utime(tmp, ns=(mtime_ns, mtime_ns))
                os.replace(tmp, path)  # a racing twin is identical
            finally:
                tmp.unlink(missing_ok=True)
        return path


def _check_entry(entry: Any) -> dict[str, Any]:
    """One entry line of a client, validated: a clean relative path, a known type."""
    if not isinstance(entry, dict):
        raise _HttpError(400, "expected one JSON object per entry line")
    path, mode = entry.get("path"), entry.get("mode")
    if not isinstance(path, str) or not isinstance(mode, int):
        raise _HttpError(400, f"entry {entry!r}: expected path and mode")
    parts = path.split("/")
    if path != "." and (
        "\0" in path or any(p in ("", ".", "..") for p in parts) or path.startswith("/")
    ):
        raise _HttpError(400, f"entry {path!r}: expected a clean relative path")
    kind = stat.S_IFMT(mode)
    if kind not in _TYPES or (path == "." and kind != stat.S_IFDIR):
        raise _HttpError(400, f"entry {path!r}: unsupported file type {kind:o}")
    if not isinstance(entry.get("mtime", 0), int):
        raise _HttpError(400, f"entry {path!r}: expected mtime in nanoseconds")
    if kind == stat.S_IFREG and "hardlink" not in entry:
        digest = entry.get("digest")
        if not isinstance(digest, str) or not _HEX.fullmatch(
            digest.removeprefix("sha256:")
        ):
            raise _HttpError(400, f"entry {path!r}: expected a sha256 digest")
    if kind == stat.S_IFLNK and not isinstance(entry.get("link"), str):
        raise _HttpError(400, f"entry {path!r}: expected a symlink target")
    return entry


def materialise(store: FileStore, target: Path, entries: list[dict[str, Any]]) -> None:
    """Create the context ``target`` (absent) from validated entries."""
    target.mkdir()
    made = {"."}  # directories this call created: the only parents allowed
    dirs: list[tuple[Path, int, int]] = []
    links: list[tuple[Path, str]] = []
    used: set[Path] = set()
    ordered = sorted(entries, key=lambda e: (e["path"].count("/"), e["path"]))
    for e in ordered:
        rel, mode, mtime = e["path"], e["mode"], e.get("mtime", 0)
        kind, perm = stat.S_IFMT(mode), stat.S_IMODE(mode)
        dest = target if rel == "." else target / rel
        if rel != ".":
            parent = rel.rpartition("/")[0] or "."
            if parent not in made:
                raise ContextSyncError(f"{rel}: its parent is not a directory")
        if kind == stat.S_IFDIR:
            if rel != ".":
                os.mkdir(dest, 0o700)
                made.add(rel)
            dirs.append((dest, perm, mtime))
        elif kind == stat.S_IFLNK:
            os.symlink(e["link"], dest)
            os.utime(dest, ns=(mtime, mtime), follow_symlinks=False)
        elif kind == stat.S_IFREG and "hardlink" in e:
            links.append((dest, str(e["hardlink"])))
        elif kind == stat.S_IFREG:
            variant = store.variant(e["digest"].removeprefix("sha256:"), perm, mtime)
            if variant in used:
                shutil.copyfile(variant, dest)
                os.chmod(dest, perm)
                os.utime(dest, ns=(mtime, mtime))
            else:
                os.link(variant, dest)
                used.add(variant)
        else:
            os.mknod(dest, kind | 0o600, int(e.get("rdev", 0)))
            os.chmod(dest, perm)
            os.utime(dest, ns=(mtime, mtime))
    files = {e["path"] for e in entries if stat.S_ISREG(e["mode"]) and "digest" in e}
    for dest, first in links:
        if first not in files:
            raise ContextSyncError(f"{dest.name}: a hard link to {first}, not a file")
        os.link(target / first, dest)
    # Deepest first: creating an entry changes its directory's mtime.
    for dest, perm, mtime in reversed(dirs):
        os.chmod(dest, perm)
        os.utime(dest, ns=(mtime, mtime))


# --- one connection ------------------------------------------------------------------


@dataclass
class Session:
    """What one connection sent so far."""

    dir: Path
    peer: str
    dockerfile: str | None = None
    entries: list[dict[str, Any]] | None = None
    wanted: set[str] = field(default_factory=set)  # hex digests asked for
    received_files: int = 0
    received_bytes: int = 0


class _Body:
    """A request body read from h11 as it arrives."""

    def __init__(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.buf = bytearray()
        self.ended = False

    async def _next(self) -> bytes:
        while not self.ended:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(1 << 16))
            elif isinstance(event, h11.Data):
                return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.ended = True
            else:  # ConnectionClosed
                raise _HttpError(400, "the request body ended early")
        return b""

    async def chunk(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            return data
        return await self._next()

    async def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self._next()
            if not data:
                raise _HttpError(400, "the request body ended early")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def all(self, limit: int) -> bytes:
        out = bytearray()
        while data := await self.chunk():
            out += data
            if len(out) > limit:
                raise _HttpError(413, "the request body is too large")
        return bytes(out)


async def serve_tcp(daemon: Daemon, files: TLSFiles) -> None:
    """Serve ``daemon`` on its ``tcp://`` address with TLS until it stops."""
    host, port = parse_tcp(daemon.addr)
    ctx = server_context(files)
    store = FileStore(daemon.root / "remote")
    await trio.to_thread.run_sync(store.init)
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise DaemonError(f"cannot listen on {daemon.addr}: {exc.strerror}") from None
    bound = sock.getsockname()
    shown = f"tcp://{host}:{bound[1]}"
    async with trio.open_nursery() as nursery:
        daemon._nursery = nursery
        nursery.start_soon(daemon._watch_signals, nursery.cancel_scope)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        print(f"buildpy serve: listening on {shown}", file=sys.stderr)
        handler = partial(_connection, daemon, ctx, store)
        await trio.serve_listeners(handler, [listener])


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


async def _connection(
    daemon: Daemon, ctx: Any, store: FileStore, raw: trio.SocketStream
) -> None:
    peer = _peer(raw)
    tls = trio.SSLStream(raw, ctx, server_side=True, https_compatible=True)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        reason = getattr(exc.__cause__, "reason", None) or exc.__cause__ or "timeout"
        print(f"buildpy serve: refused {peer}: TLS: {reason}", file=sys.stderr)
        with trio.CancelScope(shield=True):
            await raw.aclose()
        return
    session = Session(store.sessions / uuid.uuid4().hex, peer)
    try:
        await _serve_requests(daemon, store, session, tls)
    finally:
        with trio.CancelScope(shield=True):
            await tls.aclose()
            if session.dir.exists():
                await trio.to_thread.run_sync(
                    partial(shutil.rmtree, session.dir, ignore_errors=True)
                )


async def _serve_requests(
    daemon: Daemon, store: FileStore, session: Session, tls: trio.SSLStream
) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _next_request(tls, conn)
            if request is None:
                return
            body = _Body(tls, conn)
            try:
                await _route(daemon, store, session, tls, conn, request, body)
            except _HttpError as exc:
                if conn.our_state is not h11.SEND_RESPONSE:
                    return
                await _send_json(tls, conn, exc.status, {"message": str(exc)})
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except _ConnectionDone:
        return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    except ContextSyncError as exc:
        print(f"buildpy serve: {session.peer}: {exc}", file=sys.stderr)
        return


async def _next_request(
    stream: trio.abc.Stream, conn: h11.Connection
) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(1 << 16))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed, or a client that stopped mid-cycle


async def _route(
    daemon: Daemon,
    store: FileStore,
    session: Session,
    tls: trio.SSLStream,
    conn: h11.Connection,
    req: h11.Request,
    body: _Body,
) -> None:
    path = re.sub(r"^/v[0-9.]+(?=/)", "", urlsplit(req.target.decode()).path)
    method = req.method.decode()
    if method == "POST" and path == "/context/entries":
        await _send_json(tls, conn, 200, await _entries(store, session, body))
    elif method == "POST" and path == "/context/files":
        await _send_json(tls, conn, 200, await _files(store, session, body))
    else:
        data = await body.all(MAX_BODY)
        if method == "POST" and path == "/context/plan":
            await _send_json(tls, conn, 200, await _plan(daemon, _json_body(data)))
        elif method == "POST" and path == "/context/needs":
            answer = await _needs(daemon, session, _json_body(data))
            await _send_json(tls, conn, 200, answer)
        elif method == "POST" and path == "/cli":
            await _cli(daemon, store, session, tls, conn, _json_body(data))
        else:  # the endpoints of the Unix socket, as they are
            await daemon._route(tls, conn, req, data, [])  # type: ignore[arg-type]


def _argv(body: dict[str, Any]) -> list[str]:
    argv = body.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise _HttpError(400, "expected argv, a list of strings")
    return argv


def _env(client_env: Any) -> dict[str, str]:
    env = dict(os.environ)
    if isinstance(client_env, dict):
        env.update({k: str(v) for k, v in client_env.items() if k in PASS_ENV})
    return env


async def _call(
    daemon: Daemon, argv: list[str], call: str, env: dict[str, str]
) -> tuple[int, str, str]:
    """Run one of the child calls below; its exit code, stdout and stderr."""
    job = await daemon.start_job(argv, "/", env, {}, call=call)
    chunks: dict[int, list[bytes]] = {1: [], 2: []}

    async def on_output(which: int, data: bytes) -> None:
        chunks[which].append(data)

    try:
        code = await daemon.run_job(job, on_output, trio.Event())
    finally:
        daemon._forget(job)
    if job.daemon_stopped:
        raise _HttpError(503, STOPPED.strip().removeprefix("ERROR: "))
    out = b"".join(chunks[1]).decode(errors="replace")
    err = b"".join(chunks[2]).decode(errors="replace")
    return code, out, err


async def _plan(daemon: Daemon, body: dict[str, Any]) -> dict[str, Any]:
    code, out, err = await _call(daemon, _argv(body), "context-plan", _env({}))
    if code == 0:
        try:
            answer = json.loads(out)
            if isinstance(answer, dict) and "context" in answer:
                return answer
        except ValueError:
            pass
    return {"exit_code": code, "stdout": out, "stderr": err}


async def _needs(
    daemon: Daemon, session: Session, body: dict[str, Any]
) -> dict[str, Any]:
    argv = _argv(body)
    dockerfile = body.get("dockerfile")
    if not isinstance(dockerfile, dict):
        raise _HttpError(400, "expected dockerfile, {name, text}")
    name, text = dockerfile.get("name"), dockerfile.get("text")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name:
        raise _HttpError(400, "expected dockerfile.name, a file name")
    if not isinstance(text, str):
        raise _HttpError(400, "expected dockerfile.text")
    ignore = body.get("dockerignore")
    where = session.dir / "dockerfile"

    def write() -> None:
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        (where / name).write_text(text)
        if isinstance(ignore, str):
            (where / f"{name}.dockerignore").write_text(ignore)

    await trio.to_thread.run_sync(write)
    session.dockerfile = name
    env = _env({})
    env.update(BUILDPY_REMOTE_SESSION=str(session.dir), BUILDPY_REMOTE_DOCKERFILE=name)
    code, out, _err = await _call(daemon, argv, "context-needs", env)
    try:
        answer = json.loads(out) if code == 0 else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        # Nothing is sent; the build itself reports what is wrong.
        answer = {"sources": [], "ignore": []}
    return answer


async def _entries(store: FileStore, session: Session, body: _Body) -> dict[str, Any]:
    data = await body.all(MAX_ENTRIES_BODY)
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = _check_entry(json.loads(line))
        except ValueError:
            raise _HttpError(400, "an entry line is not JSON") from None
        if entry["path"] in seen:
            raise _HttpError(400, f"entry {entry['path']!r} is listed twice")
        seen.add(entry["path"])
        entries.append(entry)
    digests = {e["digest"] for e in entries if "digest" in e}
    missing = sorted(d for d in digests if not store.has(d))
    session.entries = entries
    session.wanted = {d.removeprefix("sha256:") for d in missing}
    return {"entries": len(entries), "missing": missing}


async def _files(store: FileStore, session: Session, body: _Body) -> dict[str, Any]:
    """Receive a tar of missing contents, each verified against its name."""
    import hashlib

    while True:
        header = await body.exact(tarfile.BLOCKSIZE)
        if header == b"\0" * tarfile.BLOCKSIZE:
            await body.all(1 << 16)  # the second zero block, padding
            break
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise _HttpError(400, f"a bad tar header: {exc}") from None
        name = info.name
        if not info.isreg() or name not in session.wanted:
            raise _HttpError(400, f"tar member {name!r} was not asked for")
        path, f = store.new_file()
        h = hashlib.sha256()
        try:
            left = info.size
            while left:
                piece = await body.exact(min(_CHUNK, left))
                await trio.to_thread.run_sync(_write, f, h, piece)
                left -= len(piece)
            f.close()
            if h.hexdigest() != name:
                raise _HttpError(
                    400, f"tar member {name}: the content has another digest"
                )
            await trio.to_thread.run_sync(store.commit, path, name)
        finally:
            f.close()
            path.unlink(missing_ok=True)
        session.wanted.discard(name)
        session.received_files += 1
        session.received_bytes += info.size
        padding = -info.size % tarfile.BLOCKSIZE
        if padding:
            await body.exact(padding)
    if session.wanted:
        raise _HttpError(400, f"{len(session.wanted)} asked-for files were not sent")
    count = len(session.entries or [])
    print(
        f"buildpy serve: context from {session.peer}: {count} entries, "
        f"{session.received_files} files ({session.received_bytes} bytes) received",
        file=sys.stderr,
    )
    return {"files": session.received_files, "bytes": session.received_bytes}


def _write(f: Any, h: hashlib._Hash, piece: bytes) -> None:
    h.update(piece)
    f.write(piece)


async def _cli(
    daemon: Daemon,
    store: FileStore,
    session: Session,
    tls: trio.SSLStream,
    conn: h11.Connection,
    body: dict[str, Any],
) -> None:
    argv = _argv(body)
    tty = body.get("tty") if isinstance(body.get("tty"), dict) else {}
    env = _env(body.get("env"))
    call = None
    if session.entries is not None and session.dockerfile is not None:
        if session.wanted:
            raise _HttpError(400, "the context's files were not all sent")
        entries = session.entries
        await trio.to_thread.run_sync(
            materialise, store, session.dir / "context", entries
        )
        env.update(
            BUILDPY_REMOTE_SESSION=str(session.dir),
            BUILDPY_REMOTE_DOCKERFILE=session.dockerfile,
        )
        call = "remote-build"
    job = await daemon.start_job(argv, "/", env, tty or {}, call=call)
    await daemon._stream_job(tls, conn, job, frames=True)  # type: ignore[arg-type]


# --- in the zygote's child: what a command runs ---------------------------------------


def _parser() -> Any:
    """The CLI's parser: the zygote's warm one when cli keeps one."""
    from buildpy import cli

    return getattr(cli, "parser", cli.make_parser)()


def context_plan(argv: list[str]) -> int:
    """The context and Dockerfile paths of a build's argv, as JSON on stdout."""
    from frontend import is_git_source

    args = _parser().parse_args(argv)  # --help, bad flags: the parser's exit
    answer: dict[str, Any] = {"context": None, "dockerfile": None}
    if args.command == "build" and not is_git_source(args.context):
        # A git context is the daemon's to fetch, as buildkitd fetches one.
        answer["context"] = str(args.context)
        answer["dockerfile"] = str(args.file) if args.file else None
    json.dump(answer, sys.stdout)
    return 0


def context_needs(argv: list[str]) -> int:
    """The source patterns of what the build reads from its context and the
    .dockerignore rules, as JSON on stdout (``remoteclient.Scanner`` reads them)."""
    from buildpy.build import named_contexts
    from buildpy.engine import Engine, host_platform
    from frontend import IgnoreMatcher, convert, read_dockerignore

    args = _parser().parse_args(argv)
    session = Path(os.environ["BUILDPY_REMOTE_SESSION"])
    dockerfile = session / "dockerfile" / os.environ["BUILDPY_REMOTE_DOCKERFILE"]
    text = dockerfile.read_text()
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = (
        read_dockerignore(ignore_file.read_text()) if ignore_file.exists() else []
    )
    with Engine.open(None) as engine:
        named, _ = named_contexts(args.build_context, engine)
        plan = convert(
            text,
            filename=dockerfile.name,
            build_args=dict(args.build_arg),
            target=args.target,
            resolve_image=engine.resolve_image,
            dockerignore=patterns,
            platform=host_platform(),
            named_contexts=named,
        )
    rules = [[p.exclusion, p.regex.pattern] for p in IgnoreMatcher(patterns).patterns]
    json.dump({"sources": source_patterns(plan.final), "ignore": rules}, sys.stdout)
    return 0


def source_patterns(final: Any) -> list[list[list[str]]]:
    """Every context source pattern the graph below ``final`` reads, one list of
    path elements each: ``["lit", name]`` or ``["re", regex]`` (Go's
    filepath.Match, as buildpy.fileops matches it)."""
    from buildpy import fileops
    from buildpy.mounts import CONTEXT_RESULT, context_reads
    from solver.graph import reachable

    out: list[list[list[str]]] = []
    for vertex in reachable(final):
        # Only the main context travels; a --build-context DIR is the daemon's.
        actions = [a for name, a in context_reads(vertex) if name == CONTEXT_RESULT]
        for action in actions:
            for pattern in action.sources:
                elements, _pivot = fileops._source_elements(pattern, action.parents)
                try:
                    out.append(
                        [
                            ["re", fileops._element_regex(e).pattern]
                            if fileops._has_wildcard(e)
                            else ["lit", fileops._unescape(e)]
                            for e in elements
                        ]
                    )
                except fileops.FileOpError:
                    continue  # the build reports the bad pattern
    return out


def remote_build(argv: list[str]) -> int:
    """``buildpy build`` on the materialised context, as ``cli.main`` runs it."""
    from buildpy import cli, errors
    from buildpy.errors import BuildpyError

    session = Path(os.environ.pop("BUILDPY_REMOTE_SESSION"))
    name = os.environ.pop("BUILDPY_REMOTE_DOCKERFILE")
    args = _parser().parse_args(argv)
    args.context = session / "context"
    args.file = session / "dockerfile" / name
    try:
        return cli._dispatch(args)
    except KeyboardInterrupt:
        print("buildpy: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except BuildpyError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        _forget_checksums(args.context)


def _forget_checksums(context: Path) -> None:
    """Drop the context checksum records (buildpy.context) of a session's
    context: its path is never seen again, and they would pile up."""
    from buildpy.context import ContextHasher
    from buildpy.errors import BuildpyError
    from buildpy.state import State

    try:
        state = State.open(None)
    except BuildpyError:
        return
    try:
        hasher = ContextHasher(state.db)
        hasher.init_schema()
        hasher.forget(context.resolve())
    finally:
        state.close()


__all__ = [
    "ContextSyncError",
    "FileStore",
    "context_needs",
    "context_plan",
    "materialise",
    "remote_build",
    "serve_tcp",
    "source_patterns",
]
