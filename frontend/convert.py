"""Dockerfile AST -> build graph, image config and history.

Theory of operation
-------------------
``convert`` follows BuildKit's dockerfile2llb in four steps:

1. Split the AST into *meta args* (ARGs before the first FROM) and stages, and
   evaluate the meta args: build args override defaults, platform args are
   predefined. Meta args are visible in FROM lines only; inside a stage an ARG
   must re-declare a name to see its global value.
2. Find each stage's dependencies (its FROM names a stage, ``COPY --from``
   names a stage by name or index), pick the target (``--target`` or the last
   stage) and keep only the stages it reaches. Cycles are errors.
3. Dispatch each reachable stage once, dependencies first. A stage is a
   ``_Stage`` state: the vertex of its current root filesystem, its image
   config, its ARGs in scope, and its history. Each instruction updates the
   state: RUN, COPY, ADD and WORKDIR add a vertex; the others change only the
   config. Variables are expanded exactly where the Dockerfile reference says
   (not in RUN, CMD, ENTRYPOINT, HEALTHCHECK), every expansion of one
   instruction seeing the environment as it was before the instruction.
4. The target stage's state becomes the BuildPlan.

Every problem is raised as DockerfileError pointing at the instruction.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from frontend.errors import DockerfileError, suggest
from frontend.flags import (
    NETWORK_MODES,
    SECURITY_MODES,
    FlagError,
    MountSpec,
    check_checksum,
    check_choice,
    parse_flags,
    parse_mount,
    parse_platform,
)
from frontend.parser import (
    AST,
    KEYWORDS,
    Instruction,
    go_quote,
    parse,
    parse_heredoc,
)
from frontend.shell import ShellError, process_word, process_words
from solver.graph import (
    Action,
    ContextSource,
    CopyAction,
    ExecMount,
    ExecOp,
    FileOp,
    GitSource,
    HttpSource,
    ImageSource,
    MkdirAction,
    MkfileAction,
    ScratchSource,
    Vertex,
    VertexMeta,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A git source, as BuildKit tells one from a URL of a file.
_GIT_SOURCE = re.compile(r"^git://|^git@|^ssh://|^https?://[^#]*\.git(#.*)?$")
PIPES_DIR = "/dev/pipes"  # where a RUN's #! heredoc script is mounted (BuildKit's)
DEFAULT_SHELL = ("/bin/sh", "-c")
HISTORY_COMMENT = "buildkit.dockerfile.v0"
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9\-_.]*$")
# Proxy args are predefined: passing them with --build-arg is never "unused".
_PROXY_ARGS = frozenset(
    f(name)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for f in (str.upper, str.lower)
)


def is_git_source(text: str) -> bool:
    """Whether ``text`` names a git repository (ADD's source, build's context)
    rather than a path or the URL of a file, as BuildKit tells them apart."""
    return _GIT_SOURCE.match(text) is not None


def redacted(url: str) -> str:
    """``url`` for progress and messages: a password or token in it (or an
    https URL's user name, where tokens go) is not shown."""
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and parts.scheme != "ssh"):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"***@{host}").geturl()


def _for_the_builder(name: str) -> bool:
    """Build args that speak to the builder, not to the Dockerfile
    (BUILDKIT_INLINE_CACHE, BUILDKIT_DOCKERFILE_CHECK, SOURCE_DATE_EPOCH):
    never "not used"."""
    return name.startswith("BUILDKIT_") or name == "SOURCE_DATE_EPOCH"


@dataclass(frozen=True)
class ResolvedImage:
    ref: str  # normalized name as given, e.g. "busybox:latest"
    digest: str  # manifest digest "sha256:..."
    config: dict  # the image's full OCI config JSON


ImageResolver = Callable[[str], ResolvedImage]  # raises LookupError if not found


@dataclass(frozen=True)
class HistoryEntry:
    created_by: str
    empty_layer: bool  # True for instructions that make no layer (ENV, CMD, ...)
    vertex: Vertex | None  # the vertex whose result holds this entry's layer
    comment: str = HISTORY_COMMENT


@dataclass(frozen=True)
class NamedContext:
    """A ``--build-context NAME=...``: the image ``image`` names (FROM NAME and
    ``--from=NAME`` read it instead of an image or stage of that name), or,
    with ``image`` None, a local directory that ``--from=NAME`` reads as the
    context is read (a ContextSource named NAME, ``excludes`` its
    .dockerignore's patterns)."""

    image: str | None = None
    excludes: tuple[str, ...] = ()


@dataclass
class BuildPlan:
    final: Vertex  # root filesystem of the target stage
    config: dict  # {"architecture","os","config":{...}}: no rootfs/history/created
    history: list[HistoryEntry]  # the target's and its parent stages' entries
    base: ResolvedImage | None  # image at the bottom of the chain; None for scratch
    warnings: list[str]  # e.g. "build arg FOO was not used"
    stages: list[str]  # stage names (or indexes) in the graph, for display


# --- flags ------------------------------------------------------------------------


def _parse_flags(node: Instruction, fail: _Fail) -> dict[str, Any]:
    """The node's flags by name (frontend.flags), errors pointing at the node."""
    try:
        return parse_flags(node.keyword, node.flags)
    except FlagError as exc:
        return fail(exc.message, hint=exc.hint)


class _Fail:
    """Raises DockerfileError at one instruction; ``fail("message")``."""

    def __init__(self, filename: str, node: Instruction) -> None:
        self.filename, self.node = filename, node

    def __call__(self, message: str, *, hint: str | None = None) -> Any:
        raise DockerfileError(
            message,
            filename=self.filename,
            line=self.node.start_line,
            column=self.node.start_column,
            end_line=self.node.end_line,
            hint=hint,
        )


# --- Go formatting for history strings -------------------------------------------


def _go_quote_list(items: Sequence[str]) -> str:
    """Go's ``%q`` of a []string: ``["a" "b c"]``."""
    return "[" + " ".join(go_quote(s) for s in items) + "]"


def _go_duration(ns: int) -> str:
    """Go's time.Duration.String() for the whole-unit values a Dockerfile gives."""
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{ns / size:g}{unit}"
    seconds = ns / 1e9
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def _parse_duration(text: str) -> int | None:
    """Go's time.ParseDuration (positive values), in nanoseconds."""
    if text == "0":
        return 0
    total, pos = 0.0, 0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        return None
    return int(total)


# --- stages -----------------------------------------------------------------------


@dataclass
class _StageDef:
    """A stage as written: its FROM and the instructions after it."""

    index: int
    name: str | None
    from_node: Instruction
    base_name: str  # after meta-arg expansion, as written otherwise
    nodes: list[Instruction]
    deps: list[int] = field(default_factory=list)
    base_stage: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.name is not None else str(self.index)


@dataclass
class _Stage:
    """The dispatch state of one stage (see the module docstring, step 3)."""

    define: _StageDef
    root: Vertex
    config: dict
    base: ResolvedImage | None
    history: list[HistoryEntry]
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False

    @property
    def inner(self) -> dict:
        return self.config["config"]

    def env_list(self) -> list[str]:
        return list(self.inner.get("Env") or [])

    def env_map(self) -> dict[str, str]:
        """What expansions see: ARGs in scope, overridden by ENV."""
        values = {k: v for k, v in self.args.items() if v is not None}
        for entry in self.env_list():
            key, _, value = entry.partition("=")
            values[key] = value
        return values

    def exec_env(self) -> tuple[str, ...]:
        """A RUN's environment: the image Env, then ARGs that ENV does not set."""
        env = self.env_list()
        keys = {e.partition("=")[0] for e in env}
        for key, value in self.args.items():
            if value is not None and key not in keys:
                env.append(f"{key}={value}")
        return tuple(env)


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    for i, entry in enumerate(env):
        if entry.partition("=")[0] == key:
            env[i] = f"{key}={value}"
            return env
    env.append(f"{key}={value}")
    return env


class _Converter:
    def __init__(
        self,
        ast: AST,
        *,
        build_args: Mapping[str, str],
        target: str | None,
        resolve_image: ImageResolver,
        dockerignore: Sequence[str],
        network: str,
        no_cache: bool,
        platform: tuple[str, str],
        extra_hosts: tuple[tuple[str, str], ...] = (),
        shm_size: int = 0,
        ulimits: tuple[tuple[str, int, int], ...] = (),
        named_contexts: Mapping[str, NamedContext] | None = None,
    ) -> None:
        self.ast = ast
        self.filename = ast.filename
        self.build_args = dict(build_args)
        self.target_name = target
        self.resolve_image = resolve_image
        self.dockerignore = tuple(dockerignore)
        self.network = network
        self.no_cache = no_cache
        self.platform = platform
        self.extra_hosts = extra_hosts
        self.shm_size = shm_size
        self.ulimits = ulimits
        self.named = {k.lower(): v for k, v in (named_contexts or {}).items()}
        self._named_vertices: dict[str, Vertex] = {}
        self.used_args: set[str] = set()
        self.meta_args: dict[str, str | None] = {}
        self.stage_defs: list[_StageDef] = []
        self.stages: dict[int, _Stage] = {}
        self._context: Vertex | None = None
        self._images: dict[str, ResolvedImage] = {}
        # The parser's own warnings (empty continuation lines) come back as
        # the NoEmptyContinuation check, see check_rules.
        self.warnings: list[str] = []

    def fail_at(self, node: Instruction) -> _Fail:
        return _Fail(self.filename, node)

    # -- step 1: meta args and stages ----------------------------------------

    def predefined_args(self) -> dict[str, str]:
        os_, arch = self.platform
        plat = f"{os_}/{arch}"
        return {
            "BUILDPLATFORM": plat,
            "BUILDOS": os_,
            "BUILDARCH": arch,
            "BUILDVARIANT": "",
            "TARGETPLATFORM": plat,
            "TARGETOS": os_,
            "TARGETARCH": arch,
            "TARGETVARIANT": "",
        }

    def split_stages(self) -> None:
        predefined = self.predefined_args()
        scope: dict[str, str] = dict(predefined)
        # FROM lines and RUN --mount from= see the global scope, as it ends up.
        self.meta_scope = scope
        for key in predefined:
            if key in self.build_args:
                scope[key] = self.build_args[key]
        current: _StageDef | None = None
        for node in self.ast.instructions:
            fail = self.fail_at(node)
            if node.keyword not in {k.lower() for k in KEYWORDS}:
                fail(
                    f"unknown instruction: {node.original.split()[0]}",
                    hint=suggest(node.original.split()[0], KEYWORDS),
                )
            if node.keyword == "from":
                current = self.new_stage(node, scope)
                continue
            if current is None:
                if node.keyword != "arg":
                    fail(
                        f"no build stage in current context: {node.keyword.upper()} "
                        "must come after FROM (only ARG may come before it)"
                    )
                for name, value in self.arg_pairs(node, scope):
                    if name in self.build_args:
                        value = self.build_args[name]
                        self.used_args.add(name)
                    self.meta_args[name] = value
                    if value is not None:
                        scope[name] = value
                continue
            current.nodes.append(node)
        if current is None:
            raise DockerfileError(
                "no build stage: a Dockerfile needs a FROM instruction",
                filename=self.filename,
                line=self.ast.instructions[0].start_line,
                column=1,
            )

    def new_stage(self, node: Instruction, scope: Mapping[str, str]) -> _StageDef:
        fail = self.fail_at(node)
        flags = _parse_flags(node, fail)
        words = [a for a in node.args if isinstance(a, str)]
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            fail("FROM requires either one or three arguments: FROM image [AS name]")
        name = None
        if len(words) == 3:
            name = words[2].lower()
            if not _STAGE_NAME_RE.match(name):
                fail(
                    f"invalid name for build stage: {words[2]!r}, name can't start "
                    "with a number or contain symbols"
                )
            if any(s.name == name for s in self.stage_defs):
                fail(f"duplicate stage name {name!r}")
        base = self.expand(words[0], scope, fail)
        if not base:
            fail(f"base name ({words[0]}) should not be blank")
        if "platform" in flags:
            self.check_platform(self.expand(flags["platform"], scope, fail), fail)
        define = _StageDef(len(self.stage_defs), name, node, base, [])
        self.stage_defs.append(define)
        return define

    def check_platform(self, value: str, fail: _Fail) -> None:
        """FROM --platform: buildpy builds for the host's platform only."""
        try:
            os_, arch, _ = parse_platform(value)
        except FlagError as exc:
            fail(exc.message)
            return
        if (os_, arch) != tuple(self.platform):
            fail(
                f"FROM --platform={value}: building for another platform than "
                f"{'/'.join(self.platform)} is not supported yet"
            )

    def arg_pairs(
        self, node: Instruction, scope: Mapping[str, str]
    ) -> list[tuple[str, str | None]]:
        fail = self.fail_at(node)
        if not node.args:
            fail("ARG requires at least one argument")
        pairs: list[tuple[str, str | None]] = []
        for word in node.args:
            assert isinstance(word, str)
            name, has_value, default = word.partition("=")
            if not name:
                fail(f"ARG names can not be blank: {word!r}")
            value = self.expand(default, scope, fail) if has_value else None
            pairs.append((name, value))
        return pairs

    def expand(self, word: str, env: Mapping[str, str], fail: _Fail) -> str:
        try:
            return process_word(word, env, escape=self.ast.escape)
        except ShellError as exc:
            return fail(exc.message)

    def expand_words(self, word: str, env: Mapping[str, str], fail: _Fail) -> list:
        try:
            return process_words(word, env, escape=self.ast.escape)
        except ShellError as exc:
            return fail(exc.message)

    # -- step 2: dependencies, target, reachable stages ----------------------

    def stage_by_name(self, name: str) -> _StageDef | None:
        lowered = name.lower()
        for define in self.stage_defs:
            if define.name == lowered:
                return define
        return None

    def link_stages(self) -> None:
        for define in self.stage_defs:
            base = self.stage_by_name(define.base_name)
            if base is not None:
                define.base_stage = base.index
                define.deps.append(base.index)
            for node in define.nodes:
                if node.keyword == "run":
                    froms = [m.from_ for m in self.mount_specs(node, None)]
                elif node.keyword == "copy":
                    froms = [_parse_flags(node, self.fail_at(node)).get("from")]
                else:
                    continue
                for value in froms:
                    dep = self.from_stage(value, node) if value else None
                    if dep is not None:
                        define.deps.append(dep.index)

    def mount_specs(
        self, node: Instruction, env: Mapping[str, str] | None
    ) -> list[MountSpec]:
        """The RUN's --mount flags; values expanded with ``env`` when given."""
        fail = self.fail_at(node)

        def expand(word: str) -> str:
            return self.expand(word, env or {}, fail)

        def expand_from(word: str) -> str:
            return self.expand(word, self.meta_scope, fail)

        specs = []
        for value in _parse_flags(node, fail).get("mount", []):
            try:
                specs.append(
                    parse_mount(
                        value,
                        expand=None if env is None else expand,
                        expand_from=expand_from,
                    )
                )
            except FlagError as exc:
                fail(f"--mount={value}: {exc.message}", hint=exc.hint)
        return specs

    def from_stage(self, value: str, node: Instruction) -> _StageDef | None:
        """The stage ``COPY --from=value`` names, or None for an image."""
        if "$" in value:
            self.fail_at(node)(
                f"variable expansion is not supported in --from: {value}"
            )
        if value.isdigit():
            index = int(value)
            if index >= len(self.stage_defs):
                self.fail_at(node)(
                    f"invalid from flag value {value}: index out of bounds "
                    f"(the Dockerfile has {len(self.stage_defs)} stages)"
                )
            return self.stage_defs[index]
        return self.stage_by_name(value)

    def target_stage(self) -> _StageDef:
        if self.target_name is None:
            return self.stage_defs[-1]
        define = self.stage_by_name(self.target_name)
        if define is None:
            names = [d.name for d in self.stage_defs if d.name]
            raise DockerfileError(
                f"target stage {self.target_name!r} could not be found",
                filename=self.filename,
                hint=suggest(self.target_name, names),
            )
        return define

    def dispatch_order(self, target: _StageDef) -> list[_StageDef]:
        """Reachable stages, dependencies first; raises on a cycle."""
        order: list[_StageDef] = []
        state: dict[int, str] = {}

        def visit(define: _StageDef, path: list[str]) -> None:
            if state.get(define.index) == "done":
                return
            if state.get(define.index) == "visiting":
                cycle = " -> ".join([*path, define.label])
                self.fail_at(define.from_node)(
                    f"circular dependency detected on stage: {define.label} ({cycle})"
                )
            state[define.index] = "visiting"
            for dep in define.deps:
                visit(self.stage_defs[dep], [*path, define.label])
            state[define.index] = "done"
            order.append(define)

        visit(target, [])
        return order

    # -- step 3: dispatch --------------------------------------------------------

    def meta(self, define: _StageDef, step: int, text: str, node: Instruction):
        total = len(define.nodes) + 1
        if define.name is not None:
            prefix = f"{define.name} "
        elif len(self.stage_defs) > 1:
            prefix = f"stage-{define.index} "
        else:
            prefix = ""
        return VertexMeta(
            name=f"[{prefix}{step}/{total}] {text}",
            stage=define.label,
            lines=node.lines,
            ignore_cache=self.no_cache,
        )

    def context(self) -> Vertex:
        if self._context is None:
            self._context = Vertex(
                ContextSource(excludes=self.dockerignore),
                meta=VertexMeta(
                    name="[internal] load build context", ignore_cache=self.no_cache
                ),
            )
        return self._context

    def named_context(self, name: str, named: NamedContext) -> Vertex:
        """The vertex of a local directory given as ``--build-context NAME=DIR``."""
        if name not in self._named_vertices:
            self._named_vertices[name] = Vertex(
                ContextSource(name=name, excludes=named.excludes),
                meta=VertexMeta(
                    name=f"[internal] load build context {name}",
                    ignore_cache=self.no_cache,
                ),
            )
        return self._named_vertices[name]

    def image(self, ref: str, node: Instruction) -> ResolvedImage:
        if ref not in self._images:
            named = self.named.get(ref.lower())
            if named is not None and named.image is None:
                self.fail_at(node)(
                    f"{ref} is a directory (--build-context): COPY --from and RUN "
                    "--mount from= read it; as a base image it is not supported yet"
                )
            try:
                self._images[ref] = self.resolve_image(
                    named.image if named is not None and named.image else ref
                )
            except LookupError as exc:
                # A resolver that tried a registry says why in ``detail``, or
                # gives the whole ``message`` (a pull asked for, that failed).
                detail = getattr(exc, "detail", "")
                self.fail_at(node)(
                    getattr(exc, "message", "")
                    or (
                        f"base image {ref} not found in the local store nor pulled: "
                        f"{detail}"
                    )
                    if detail
                    else f"base image {ref} not found in the local store; import it "
                    "with `buildpy import` or pull it"
                )
        return self._images[ref]

    def start_stage(self, define: _StageDef) -> _Stage:
        node = define.from_node
        os_, arch = self.platform
        if define.base_stage is not None:
            parent = self.stages[define.base_stage]
            return _Stage(
                define,
                parent.root,
                copy.deepcopy(parent.config),
                parent.base,
                list(parent.history),
            )
        if define.base_name.lower() == "scratch":
            root = Vertex(
                ScratchSource(), meta=self.meta(define, 1, "FROM scratch", node)
            )
            config: dict = {"architecture": arch, "os": os_, "config": {}}
            base = None
        else:
            base = self.image(define.base_name, node)
            root = Vertex(
                ImageSource(base.ref, base.digest),
                meta=self.meta(define, 1, f"FROM {base.ref}@{base.digest}", node),
            )
            config = {
                "architecture": base.config.get("architecture", arch),
                "os": base.config.get("os", os_),
                "config": copy.deepcopy(base.config.get("config") or {}),
            }
        env = list(config["config"].get("Env") or [])
        if not any(e.startswith("PATH=") for e in env):
            # BuildKit adds a default PATH when the base sets none (scratch too).
            env.append(f"PATH={DEFAULT_PATH}")
        config["config"]["Env"] = env
        return _Stage(define, root, config, base, [])

    def dispatch_stage(self, define: _StageDef) -> _Stage:
        stage = self.start_stage(define)
        triggers = stage.inner.pop("OnBuild", None) or []
        if triggers:
            self.run_triggers(stage, triggers, define.from_node)
        for step, node in enumerate(define.nodes, start=2):
            self.dispatch(stage, node, step)
        self.stages[define.index] = stage
        return stage

    def run_triggers(self, stage: _Stage, triggers: list[str], at: Instruction):
        """ONBUILD triggers of the base image run right after FROM."""
        for trigger in triggers:
            try:
                node = parse(trigger, filename=self.filename).instructions[0]
            except DockerfileError as exc:
                self.fail_at(at)(f"invalid ONBUILD trigger {trigger!r}: {exc.message}")
            node.start_line, node.end_line = at.start_line, at.end_line
            node.start_column = at.start_column
            self.dispatch(stage, node, 1)

    def dispatch(self, stage: _Stage, node: Instruction, step: int) -> None:
        handler = getattr(self, f"do_{node.keyword}", None)
        fail = self.fail_at(node)
        if handler is None:
            fail(
                f"unknown instruction: {node.keyword.upper()}",
                hint=suggest(node.keyword.upper(), KEYWORDS),
            )
        flags = _parse_flags(node, fail)
        handler(stage, node, step, flags, fail)

    def record(
        self, stage: _Stage, created_by: str, vertex: Vertex | None = None
    ) -> None:
        stage.history.append(HistoryEntry(created_by, vertex is None, vertex))

    def display(self, node: Instruction) -> str:
        keyword, _, rest = node.original.strip().partition(" ")
        return f"{keyword.upper()} {rest.strip()}".strip()

    # -- instructions ------------------------------------------------------------

    def do_from(self, stage, node, step, flags, fail) -> None:  # pragma: no cover
        raise AssertionError("FROM starts a stage; split_stages handles it")

    def do_run(self, stage: _Stage, node: Instruction, step, flags, fail) -> None:
        if flags.get("device"):
            # Labs-only in BuildKit (Dockerfile 1.14.0-labs): not stable syntax.
            fail(
                "RUN --device is labs syntax (docker/dockerfile:1-labs), not supported"
            )
        env = stage.env_map()
        try:
            network = check_choice(
                "network",
                self.expand(flags.get("network", "default"), env, fail),
                NETWORK_MODES,
            )
            security = check_choice(
                "security",
                self.expand(flags.get("security", "sandbox"), env, fail),
                SECURITY_MODES,
            )
        except FlagError as exc:
            fail(exc.message, hint=exc.hint)
        inputs = [stage.root]
        mounts = tuple(
            self.exec_mount(stage, spec, inputs, node, ssh_index)
            for ssh_index, spec in enumerate(self.mount_specs(node, env))
        )
        if not node.args:
            fail("RUN requires at least one argument")
        args = [a for a in node.args if isinstance(a, str)]
        script = self.shebang_script(args[0], node) if not node.json else None
        if script is not None:
            # RUN <<EOF whose body starts with #!: the body is a program of its
            # own, run from a read-only mount, as BuildKit does (/dev/pipes/NAME).
            inputs.append(script)
            name = node.heredocs[0].name
            mounts += (ExecMount("bind", PIPES_DIR, input=len(inputs) - 1, source="/"),)
            args = [f"{PIPES_DIR}/{name}"]
        elif not node.json:
            args = self.shell(stage) + [self.run_script(args[0], node, fail)]
        cwd = stage.inner.get("WorkingDir") or "/"
        op = ExecOp(
            args=tuple(args),
            env=stage.exec_env(),
            cwd=cwd,
            user=stage.inner.get("User") or "",
            network=self.network if network == "default" else network,
            mounts=mounts,
            security=security,
            extra_hosts=self.extra_hosts,
            shm_size=self.shm_size,
            ulimits=self.ulimits,
        )
        stage.root = Vertex(
            op, tuple(inputs), self.meta(stage.define, step, self.display(node), node)
        )
        env = stage.env_map()
        arg_words = [f"{k}={env.get(k, v or '')}" for k, v in stage.args.items()]
        prefix = [f"|{len(arg_words)}", *arg_words] if arg_words else []
        created_by = "RUN " + " ".join([*prefix, *args]) + " # buildkit"
        stage.history.append(HistoryEntry(created_by, False, stage.root))

    def exec_mount(
        self,
        stage: _Stage,
        spec: MountSpec,
        inputs: list[Vertex],
        node: Instruction,
        index: int,
    ) -> ExecMount:
        """One RUN --mount as the ExecOp's mount; adds the input it reads.

        A bind mount reads ``from`` (a stage or an image) or else the context;
        a cache mount reads ``from`` only when given (its seed). Relative
        targets are relative to the WORKDIR, as in BuildKit.
        """
        target = spec.target
        if spec.type == "ssh" and not target:
            target = f"/run/buildkit/ssh_agent.{index}"
        if target:
            workdir = stage.inner.get("WorkingDir") or "/"
            target = posixpath.normpath(posixpath.join("/", workdir, target))
            target = "/" + target.lstrip("/")
            if target == "/":
                self.fail_at(node)(
                    f"invalid --mount target {spec.target!r}: a mount cannot "
                    "cover the root filesystem"
                )
        input_index = None
        if spec.type == "bind" or (spec.type == "cache" and spec.from_):
            source_vertex = None
            if spec.from_:
                source_vertex = self.copy_source(node, {"from": spec.from_})
            vertex = source_vertex or self.context()
            if vertex not in inputs:
                inputs.append(vertex)
            input_index = inputs.index(vertex)
        source = spec.source
        if input_index is not None:
            source = "/" + posixpath.normpath("/" + source).lstrip("/")
        return ExecMount(
            type=spec.type,
            target=target,
            input=input_index,
            source=source,
            readonly=spec.readonly,
            id=spec.id,
            sharing=spec.sharing or "shared",
            mode=spec.mode,
            uid=spec.uid,
            gid=spec.gid,
            size=spec.size,
            required=spec.required,
            env=spec.env or "",
        )

    def shebang_script(self, text: str, node: Instruction) -> Vertex | None:
        """The file of a ``RUN <<EOF`` whose body starts with ``#!``, on scratch;
        None for any other RUN."""
        if len(node.heredocs) != 1 or _heredoc_name(text.strip()) is None:
            return None
        doc = node.heredocs[0]
        if not doc.body.startswith("#!"):
            return None
        return Vertex(
            FileOp((MkfileAction("/" + doc.name, doc.body, mode=0o755),)),
            (Vertex(ScratchSource(), meta=VertexMeta(name="[internal] scratch")),),
            meta=VertexMeta(name=f"[internal] heredoc script {doc.name}"),
        )

    def run_script(self, text: str, node: Instruction, fail: _Fail) -> str:
        if not node.heredocs:
            return text
        doc = node.heredocs[0]
        if len(node.heredocs) == 1 and _heredoc_name(text.strip()) is not None:
            return doc.body
        # Anything else goes to the shell as a shell heredoc, bodies included.
        bodies = "".join(f"{d.body}{d.name}\n" for d in node.heredocs)
        return f"{text}\n{bodies}"

    def shell(self, stage: _Stage) -> list[str]:
        return list(stage.inner.get("Shell") or DEFAULT_SHELL)

    def copy_source(self, node: Instruction, flags: dict) -> Vertex | None:
        """What ``--from`` names (a stage's root or an image); None: the context."""
        value = flags.get("from")
        if value is None:
            return None
        define = self.from_stage(value, node)
        if define is not None:
            return self.stages[define.index].root
        named = self.named.get(value.lower())
        if named is not None and named.image is None:
            return self.named_context(value.lower(), named)
        resolved = self.image(value, node)
        return Vertex(
            ImageSource(resolved.ref, resolved.digest),
            meta=VertexMeta(
                name=f"[internal] image {resolved.ref}@{resolved.digest}",
                ignore_cache=self.no_cache,
            ),
        )

    def do_copy(self, stage, node, step, flags, fail, is_add: bool = False) -> None:
        keyword = "ADD" if is_add else "COPY"
        words = [a for a in node.args if isinstance(a, str)]
        if len(words) < 2:
            fail(
                f"{keyword} requires at least two arguments, but only "
                f"{len(words)} was provided. Destination could not be determined"
            )
        env = stage.env_map()
        heredocs = {d.name: d for d in node.heredocs}
        sources: list[str] = []
        urls: list[str] = []
        gits: list[str] = []
        files: list[tuple[str, str]] = []
        for word in words[:-1]:
            doc = heredocs.get(_heredoc_name(word) or "")
            if doc is not None:
                data = doc.body
                if doc.expand:
                    data = self.heredoc_expand(data, env, fail)
                files.append((doc.name, data))
                continue
            source = self.expand(word, env, fail)
            if is_git_source(source):
                if not is_add:
                    fail("source can't be a git ref for COPY")
                gits.append(source)
                continue
            if re.match(r"^https?://", source):
                if not is_add:
                    fail("source can't be a URL for COPY")
                urls.append(source)
                continue
            sources.append(source)
        checksum = None
        if "checksum" in flags:
            try:
                checksum = check_checksum(self.expand(flags["checksum"], env, fail))
            except FlagError as exc:
                fail(exc.message)
            if not urls and not gits:
                fail("ADD --checksum can only be used with URL and git sources")
            if sources or len(urls) + len(gits) > 1:
                fail("ADD --checksum can only be used with a single URL source")
            if urls and not checksum.startswith("sha256:"):
                fail(f"ADD --checksum of a URL must be sha256:<hex>, not {checksum!r}")
            if gits and checksum.startswith("sha"):
                fail(f"ADD --checksum of a git source is a commit, not {checksum!r}")
        # --link gives the same files (only the cache differs in BuildKit).
        raw_dest = self.expand(words[-1], env, fail)
        dest = self.resolve_dest(stage, raw_dest)
        if len(words) > 2 and not dest.endswith("/"):
            fail(
                f"When using {keyword} with more than one source file, the "
                "destination must be a directory and end with a /"
            )
        chown = self.expand(flags["chown"], env, fail) if "chown" in flags else None
        chmod = self.expand(flags["chmod"], env, fail) if "chmod" in flags else None
        if chmod is not None and not re.fullmatch(r"[0-7]{3,4}", chmod):
            fail(f"invalid --chmod value {chmod!r}: expected an octal mode like 0755")
        excludes = tuple(self.expand(e, env, fail) for e in flags.get("exclude", []))
        actions: list[Action] = []
        for name, data in files:
            path = dest + name if dest.endswith("/") else dest
            mode = int(chmod, 8) if chmod else 0o644
            actions.append(MkfileAction(path, data, mode=mode, owner=chown))
        inputs = [stage.root]
        for git in gits:
            # ADD <git url>#ref:subdir: the tree at ref, from a vertex of its own
            # (the worker clones it: buildpy/gitsource.py); its contents go to dest.
            remote, _, fragment = git.partition("#")
            ref, _, subdir = fragment.partition(":")
            inputs.append(
                Vertex(
                    GitSource(
                        remote,
                        ref,
                        subdir.strip("/"),
                        keep_git_dir=bool(flags.get("keep-git-dir", False)),
                        checksum=checksum,
                    ),
                    meta=VertexMeta(name=f"[internal] git {redacted(git)}"),
                )
            )
            actions.append(
                CopyAction(
                    ("/",), dest, source=len(inputs) - 1, chown=chown, chmod=chmod
                )
            )
        for url in urls:
            # ADD <url>: the file, named after the URL's path, from a vertex of
            # its own (the worker fetches it: buildpy/httpsource.py).
            name = posixpath.basename(unquote(urlsplit(url).path))
            if not name and dest.endswith("/"):
                fail(
                    f"cannot determine a file name from the URL {url}: give the "
                    "destination as a file path"
                )
            name = name or "download"
            inputs.append(
                Vertex(
                    HttpSource(url, name, checksum),
                    meta=VertexMeta(
                        name=f"[internal] fetch {redacted(url)}", ignore_cache=False
                    ),
                )
            )
            actions.append(
                CopyAction(
                    ("/" + name,),
                    dest,
                    source=len(inputs) - 1,
                    chown=chown,
                    chmod=chmod,
                    # A remote archive is extracted only when asked (--unpack).
                    unpack=bool(flags.get("unpack", False)),
                )
            )
        if sources:
            source_vertex = self.copy_source(node, flags)
            inputs.append(source_vertex or self.context())
            actions.append(
                CopyAction(
                    tuple(sources),
                    dest,
                    source=len(inputs) - 1,
                    chown=chown,
                    chmod=chmod,
                    unpack=is_add and flags.get("unpack", True),
                    excludes=excludes,
                    parents=bool(flags.get("parents")),
                )
            )
        stage.root = Vertex(
            FileOp(tuple(actions)),
            tuple(inputs),
            self.meta(stage.define, step, self.display(node), node),
        )
        text = " ".join([keyword, *[w for w in words[:-1]], raw_dest])
        stage.history.append(HistoryEntry(text + " # buildkit", False, stage.root))

    def do_add(self, stage, node, step, flags, fail) -> None:
        self.do_copy(stage, node, step, flags, fail, is_add=True)

    def heredoc_expand(self, data: str, env: Mapping[str, str], fail: _Fail) -> str:
        try:
            return process_word(
                data, env, escape=self.ast.escape, raw_quotes=True, raw_escapes=True
            )
        except ShellError as exc:
            return fail(exc.message)

    def resolve_dest(self, stage: _Stage, raw: str) -> str:
        """Absolute destination; a trailing ``/`` (or ``.``) means a directory."""
        workdir = stage.inner.get("WorkingDir") or "/"
        path = posixpath.normpath(posixpath.join("/", workdir, raw))
        path = "/" + path.lstrip("/")
        is_dir = raw.endswith("/") or raw in (".", "") or raw.endswith("/.")
        if is_dir and not path.endswith("/"):
            path += "/"
        return path

    def do_workdir(self, stage, node, step, flags, fail) -> None:
        if not node.args:
            fail("WORKDIR requires exactly one argument")
        path = self.expand(str(node.args[0]), stage.env_map(), fail)
        if not path:
            fail("WORKDIR requires a non-empty path")
        current = stage.inner.get("WorkingDir") or "/"
        workdir = posixpath.normpath(posixpath.join("/", current, path))
        workdir = "/" + workdir.lstrip("/")
        stage.inner["WorkingDir"] = workdir
        vertex = None
        if workdir != "/":
            user = stage.inner.get("User") or None
            vertex = Vertex(
                FileOp((MkdirAction(workdir, owner=user),)),
                (stage.root,),
                self.meta(stage.define, step, self.display(node), node),
            )
            stage.root = vertex
        stage.history.append(HistoryEntry(f"WORKDIR {workdir}", vertex is None, vertex))

    def do_env(self, stage, node, step, flags, fail) -> None:
        env = stage.env_map()
        pairs = []
        args = [a for a in node.args if isinstance(a, str)]
        if not args:
            fail("ENV requires at least one argument")
        for i in range(0, len(args), 3):
            key = self.expand(args[i], env, fail)
            if not key:
                fail("ENV names can not be blank")
            pairs.append((key, self.expand(args[i + 1], env, fail)))
        entries = stage.env_list()
        for key, value in pairs:
            _set_env(entries, key, value)
        stage.inner["Env"] = entries
        self.record(stage, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))

    def do_arg(self, stage, node, step, flags, fail) -> None:
        texts = []
        for name, default in self.arg_pairs(node, stage.env_map()):
            texts.append(name if default is None else f"{name}={default}")
            value = default
            if name in self.build_args:
                value = self.build_args[name]
                self.used_args.add(name)
            elif value is None and name in self.meta_args:
                value = self.meta_args[name]
            elif value is None and name in self.predefined_args():
                value = self.predefined_args()[name]
            elif value is None and name == "TARGETSTAGE":
                value = self.target_label
            stage.args.pop(name, None)
            stage.args[name] = value
        self.record(stage, "ARG " + " ".join(texts))

    def do_label(self, stage, node, step, flags, fail) -> None:
        env = stage.env_map()
        args = [a for a in node.args if isinstance(a, str)]
        if not args:
            fail("LABEL requires at least one argument")
        labels = stage.inner.setdefault("Labels", {}) or {}
        stage.inner["Labels"] = labels
        texts = []
        for i in range(0, len(args), 3):
            key = self.expand(args[i], env, fail)
            value = self.expand(args[i + 1], env, fail)
            labels[key] = value
            texts.append(f"{key}={value}")
        self.record(stage, "LABEL " + " ".join(texts))

    def do_expose(self, stage, node, step, flags, fail) -> None:
        if not node.args:
            fail("EXPOSE requires at least one argument")
        env = stage.env_map()
        ports: dict[str, dict] = {}
        for word in node.args:
            for spec in self.expand_words(str(word), env, fail):
                for port in _port_specs(spec, fail):
                    ports[port] = {}
        exposed = stage.inner.get("ExposedPorts") or {}
        exposed.update(ports)
        stage.inner["ExposedPorts"] = exposed
        shown = " ".join(f"{p}:{{}}" for p in sorted(ports))
        self.record(stage, f"EXPOSE map[{shown}]")

    def do_volume(self, stage, node, step, flags, fail) -> None:
        env = stage.env_map()
        volumes = [self.expand(str(a), env, fail) for a in node.args]
        if not volumes:
            fail("VOLUME requires at least one argument")
        if any(not v for v in volumes):
            fail("VOLUME specified can not be an empty string")
        current = stage.inner.get("Volumes") or {}
        current.update({v: {} for v in volumes})
        stage.inner["Volumes"] = current
        self.record(stage, f"VOLUME [{' '.join(volumes)}]")

    def do_stopsignal(self, stage, node, step, flags, fail) -> None:
        if not node.args:
            fail("STOPSIGNAL requires exactly one argument")
        signal = self.expand(str(node.args[0]), stage.env_map(), fail)
        if not re.fullmatch(r"\d+|SIG[A-Z0-9+\-]+|[A-Z0-9]+", signal):
            fail(f"invalid signal: {signal}")
        stage.inner["StopSignal"] = signal
        self.record(stage, f"STOPSIGNAL {signal}")

    def do_user(self, stage, node, step, flags, fail) -> None:
        if not node.args:
            fail("USER requires exactly one argument")
        user = self.expand(str(node.args[0]), stage.env_map(), fail)
        stage.inner["User"] = user
        self.record(stage, f"USER {user}")

    def do_maintainer(self, stage, node, step, flags, fail) -> None:
        if not node.args:
            fail("MAINTAINER requires exactly one argument")
        stage.config["author"] = str(node.args[0])
        self.record(stage, f"MAINTAINER {node.args[0]}")

    def do_shell(self, stage, node, step, flags, fail) -> None:
        if not node.json or not node.args:
            fail('SHELL requires the arguments to be in JSON form: SHELL ["sh", "-c"]')
        shell = [str(a) for a in node.args]
        stage.inner["Shell"] = shell
        self.record(stage, f"SHELL [{' '.join(shell)}]")

    def command(self, stage: _Stage, node: Instruction) -> list[str]:
        args = [str(a) for a in node.args]
        if node.json:
            return args
        return self.shell(stage) + args if args else []

    def do_cmd(self, stage, node, step, flags, fail) -> None:
        args = self.command(stage, node)
        stage.inner["Cmd"] = args
        stage.cmd_set = True
        self.record(stage, f"CMD {_go_quote_list(args)}")

    def do_entrypoint(self, stage, node, step, flags, fail) -> None:
        args = self.command(stage, node)
        stage.inner["Entrypoint"] = args
        if not stage.cmd_set:
            stage.inner.pop("Cmd", None)
        self.record(stage, f"ENTRYPOINT {_go_quote_list(args)}")

    def do_healthcheck(self, stage, node, step, flags, fail) -> None:
        if not node.args:
            fail("HEALTHCHECK requires an argument: CMD or NONE")
        kind = str(node.args[0]).upper()
        rest = [str(a) for a in node.args[1:]]
        if kind == "NONE":
            if rest or flags:
                fail("HEALTHCHECK NONE takes no other arguments")
            health: dict[str, Any] = {"Test": ["NONE"]}
        elif kind == "CMD":
            if not rest:
                fail("missing command after HEALTHCHECK CMD")
            test = ["CMD", *rest] if node.json else ["CMD-SHELL", rest[0]]
            health = {"Test": test}
            for flag, key in (
                ("interval", "Interval"),
                ("timeout", "Timeout"),
                ("start-period", "StartPeriod"),
                ("start-interval", "StartInterval"),
            ):
                if flag in flags:
                    ns = _parse_duration(flags[flag])
                    if ns is None:
                        fail(f"invalid duration for --{flag}: {flags[flag]!r}")
                    if 0 < ns < 1_000_000:
                        fail(f"--{flag} cannot be less than 1ms")
                    if ns:
                        health[key] = ns
            if "retries" in flags:
                if not re.fullmatch(r"\d+", flags["retries"]):
                    fail(f"--retries must be a number >= 0, not {flags['retries']!r}")
                if int(flags["retries"]):
                    health["Retries"] = int(flags["retries"])
        else:
            fail(f"unknown type {kind!r} in HEALTHCHECK (try CMD)")
        stage.inner["Healthcheck"] = health
        self.record(stage, "HEALTHCHECK " + _go_health(health))

    def do_onbuild(self, stage, node, step, flags, fail) -> None:
        if not node.args or not isinstance(node.args[0], Instruction):
            fail("ONBUILD requires at least one argument")
        inner = node.args[0]
        assert isinstance(inner, Instruction)
        if inner.keyword in ("onbuild", "from", "maintainer"):
            fail(f"{inner.keyword.upper()} isn't allowed as an ONBUILD trigger")
        if inner.keyword not in {k.lower() for k in KEYWORDS}:
            fail(
                f"unknown instruction: {inner.keyword.upper()}",
                hint=suggest(inner.keyword.upper(), KEYWORDS),
            )
        expression = re.sub(r"^\S+\s+", "", node.original.strip(), count=1)
        stage.inner.setdefault("OnBuild", []).append(expression)
        self.record(stage, f"ONBUILD {expression}")

    # -- the whole conversion ---------------------------------------------------

    def run(self) -> BuildPlan:
        # Step 1: meta args and stage boundaries.
        self.split_stages()
        # Step 2: the target and what it needs.
        self.link_stages()
        target = self.target_stage()
        self.target_label = target.name or "default"
        order = self.dispatch_order(target)
        # Step 3: stages in dependency order; only reachable ones.
        for define in order:
            self.dispatch_stage(define)
        # Step 4: the plan of the target stage.
        final = self.stages[target.index]
        for name in sorted(set(self.build_args) - self.used_args):
            if name in _PROXY_ARGS or name in self.predefined_args():
                continue
            if not _for_the_builder(name):
                self.warnings.append(f"build arg {name} was not used")
        return BuildPlan(
            final=final.root,
            config=final.config,
            history=final.history,
            base=final.base,
            warnings=self.warnings,
            stages=[d.label for d in order],
        )


def _heredoc_name(word: str) -> str | None:
    """The heredoc name when ``word`` is one ``<<NAME`` word, else None."""
    doc = parse_heredoc(word)
    return None if doc is None else doc.name


_PROTOCOLS = ("tcp", "udp", "sctp")


def _port_specs(spec: str, fail: _Fail) -> list[str]:
    """docker's nat.ParsePortSpecs for EXPOSE: ``80``, ``80/udp``, ``80-82``."""
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in _PROTOCOLS:
        fail(f"invalid proto: {proto} in EXPOSE {spec} (expected tcp, udp or sctp)")
    if ":" in port:
        port = port.rsplit(":", 1)[1]
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", port)
    if not match:
        fail(f"invalid containerPort: {port}")
        raise AssertionError
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if last < first or last > 65535:
        fail(f"invalid port range: {port}")
    return [f"{p}/{proto}" for p in range(first, last + 1)]


def _go_health(health: dict[str, Any]) -> str:
    """Go's ``%q`` of BuildKit's HealthConfig, as its history strings show it."""
    test = _go_quote_list(health["Test"])
    durations = [
        f'"{_go_duration(health.get(k, 0))}"'
        for k in ("Interval", "Timeout", "StartPeriod", "StartInterval")
    ]
    retries = health.get("Retries", 0)
    return f"&{{{test} {' '.join(durations)} '\\x{retries:02x}'}}"


def convert(
    text: str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    resolve_image: ImageResolver,
    dockerignore: Sequence[str] = (),
    network: str = "host",
    no_cache: bool = False,
    platform: tuple[str, str] = ("linux", "amd64"),
    extra_hosts: Sequence[tuple[str, str]] = (),
    shm_size: int = 0,
    ulimits: Sequence[tuple[str, int, int]] = (),
    named_contexts: Mapping[str, NamedContext] | None = None,
) -> BuildPlan:
    """Turn a Dockerfile into the build graph of its target stage.

    Raises DockerfileError for every problem of the Dockerfile.
    """
    ast = parse(text, filename=filename)
    converter = _Converter(
        ast,
        build_args=build_args or {},
        target=target,
        resolve_image=resolve_image,
        dockerignore=dockerignore,
        network=network,
        no_cache=no_cache,
        platform=platform,
        extra_hosts=tuple(extra_hosts),
        shm_size=shm_size,
        ulimits=tuple(ulimits),
        named_contexts=named_contexts,
    )
    plan = converter.run()
    check_rules(converter, text)
    return plan


def check_rules(converter: _Converter, text: str) -> None:
    """The build checks (frontend.lint) as warnings of the plan; with
    ``# check=error=true`` a finding fails the conversion."""
    from frontend.lint import lint

    images = converter._images

    def base_env(ref: str) -> list[str] | None:
        image = images.get(ref)
        if image is None:
            return None
        return (image.config.get("config") or {}).get("Env") or []

    def base_platform(ref: str) -> str | None:
        image = images.get(ref)
        if image is None or "architecture" not in image.config:
            return None
        return f"{image.config.get('os', 'linux')}/{image.config['architecture']}"

    result = lint(
        text,
        filename=converter.filename,
        ast=converter.ast,
        build_args=converter.build_args,
        dockerignore=converter.dockerignore,
        base_env=base_env,
        base_platform=base_platform,
        platform="/".join(converter.platform),
    )
    converter.warnings.extend(f.line_text() for f in result.findings)
    if result.failed:
        first = result.findings[0]
        rules = ", ".join(sorted({f.rule for f in result.findings}))
        raise DockerfileError(
            f"lint violations found for rules: {rules} (the check directive sets "
            "error=true)",
            filename=converter.filename,
            line=first.lines[0],
            column=1,
            end_line=first.lines[1],
        )
