"""Build checks: BuildKit's Dockerfile lint rules, run on the parsed AST.

Theory of operation
-------------------
``RULES`` is the one table of rules: name, description, documentation URL,
and the function that finds violations. ``lint`` parses the Dockerfile,
reads its ``# check=`` directive (or the ``BUILDKIT_DOCKERFILE_CHECK`` build
arg, which wins, as in BuildKit), walks the AST once into a ``_Model`` (the
stages, the global ARGs, what each stage declares) and hands that model to
every enabled rule. A rule yields ``Finding``s: the rule, the message, the
instruction's lines and a hint (the rule's description and URL).

The checks see only the Dockerfile, the .dockerignore patterns and, when a
resolver is given, base image configs: without one, a base image's
environment is taken to hold only ``PATH`` (BuildKit's default), and
InvalidBaseImagePlatform cannot run.

``# check=skip=A,B`` (or ``all``) turns rules off; ``error=true`` makes any
finding fail the build (exit 3); ``experimental=NAME|all`` turns on the
experimental rules, which are off otherwise.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from frontend.dockerignore import IgnoreMatcher
from frontend.errors import DockerfileError, buildkit_source, suggest
from frontend.parser import AST, Instruction, go_quote, parse
from frontend.shell import ShellError, process_word, used_variables

DOCS = "https://docs.docker.com/go/dockerfile/rule/"
PLATFORM_ARGS = (
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
)


@dataclass(frozen=True)
class Finding:
    """One violation: ``lines`` are the instruction's first and last line."""

    rule: str
    message: str
    lines: tuple[int, int]
    hint: str
    url: str
    description: str = ""

    def line_text(self) -> str:
        """``RuleName: message (line N)``: how build progress shows it."""
        return f"{self.rule}: {self.message} (line {self.lines[0]})"

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "message": self.message,
            "line": self.lines[0],
            "end_line": self.lines[1],
            "hint": self.hint,
            "url": self.url,
            "description": self.description,
        }


@dataclass
class LintResult:
    findings: list[Finding]
    error: bool  # ``# check=error=true``: findings fail the build

    @property
    def failed(self) -> bool:
        return self.error and bool(self.findings)

    def text(self, source_text: str, filename: str = "Dockerfile") -> str:
        """The findings as BuildKit's lint prints them: for each, a blank line,
        ``WARNING: Rule - URL`` (no URL when the rule has none), the message,
        and the instruction's lines; then, when the check directive makes them
        errors, ``ERROR: lint violation found for rules: A, B``."""
        out = []
        for f in self.findings:
            head = f"WARNING: {f.rule}" + (f" - {f.url}" if f.url else "")
            frame = buildkit_source(filename, source_text, *f.lines)
            out.append(f"\n{head}\n{f.message}\n{frame}")
        if self.failed:
            rules = ", ".join(sorted({f.rule for f in self.findings}))
            out.append(f"ERROR: lint violation found for rules: {rules}\n")
        return "".join(out)


@dataclass
class CheckConfig:
    """The ``# check=`` directive: ``skip=A,B|all;error=bool;experimental=...``."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False

    def enabled(self, rule: Rule) -> bool:
        # An experimental rule asked for runs whatever skip says (BuildKit's
        # documented precedence: skip=all;experimental=all runs those).
        if rule.experimental:
            return self.experimental_all or rule.name in self.experimental
        return not (self.skip_all or rule.name in self.skip)


def parse_check_directive(text: str, filename: str = "Dockerfile") -> CheckConfig:
    config = CheckConfig()
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, has_value, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        names = frozenset(filter(None, (n.strip() for n in value.split(","))))
        if not has_value:
            key = ""
        if key == "skip":
            config.skip_all = "all" in names
            config.skip = names - {"all"}
        elif key == "error":
            if value.lower() not in ("true", "false"):
                raise DockerfileError(
                    f"invalid check directive {text!r}: error must be true or false",
                    filename=filename,
                )
            config.error = value.lower() == "true"
        elif key == "experimental":
            config.experimental_all = "all" in names
            config.experimental = names - {"all"}
        else:
            raise DockerfileError(
                f"invalid check directive {text!r}: expected skip=, error= or "
                f"experimental= separated by ;, not {part!r}",
                filename=filename,
            )
    return config


# --- the model the rules read -----------------------------------------------------


@dataclass
class _Stage:
    from_node: Instruction
    base: str
    name: str | None
    nodes: list[Instruction] = field(default_factory=list)


@dataclass
class _Model:
    ast: AST
    lines: list[str]  # the source, for comment rules
    global_args: dict[str, str | None]  # ARGs before the first FROM, defaults
    global_nodes: list[Instruction]
    stages: list[_Stage]
    ignore: IgnoreMatcher | None
    base_env: Callable[[str], Sequence[str] | None]
    base_platform: Callable[[str], str | None]
    platform: str

    def stage_names(self) -> set[str]:
        return {s.name.lower() for s in self.stages if s.name}


def _words(node: Instruction) -> list[str]:
    return [a for a in node.args if isinstance(a, str)]


def _keyword_as_written(node: Instruction) -> str:
    return node.original.split(None, 1)[0] if node.original.strip() else ""


def _model(
    ast: AST,
    text: str,
    ignore: IgnoreMatcher | None,
    base_env: Callable[[str], Sequence[str] | None],
    base_platform: Callable[[str], str | None],
    platform: str,
) -> _Model:
    global_args: dict[str, str | None] = {}
    global_nodes: list[Instruction] = []
    stages: list[_Stage] = []
    for node in ast.instructions:
        if node.keyword == "from":
            words = _words(node)
            name = words[2] if len(words) == 3 else None
            stages.append(_Stage(node, words[0] if words else "", name))
        elif stages:
            stages[-1].nodes.append(node)
        else:
            global_nodes.append(node)
            if node.keyword == "arg":
                for word in _words(node):
                    key, has_value, value = word.partition("=")
                    global_args[key] = value if has_value else None
    return _Model(
        ast,
        text.splitlines(),
        global_args,
        global_nodes,
        stages,
        ignore,
        base_env,
        base_platform,
        platform,
    )


Check = Callable[[_Model], Iterator[tuple[Instruction, str]]]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    url: str
    check: Check
    experimental: bool = False


# --- the rules ------------------------------------------------------------------


def _stage_name_casing(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        if stage.name and stage.name != stage.name.lower():
            yield stage.from_node, f"Stage name '{stage.name}' should be lowercase"


def _from_as_casing(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        words = _words(stage.from_node)
        if len(words) != 3:
            continue
        keyword, as_word = _keyword_as_written(stage.from_node), words[1]
        if (keyword.isupper() and not as_word.isupper()) or (
            keyword.islower() and not as_word.islower()
        ):
            yield (
                stage.from_node,
                f"'{as_word}' and '{keyword}' keywords' casing do not match",
            )


def _no_empty_continuation(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for node in m.ast.instructions:
        if any(node.start_line < n <= node.end_line for n in m.ast.empty_continuations):
            yield node, "Empty continuation line"


def _consistent_instruction_casing(m: _Model) -> Iterator[tuple[Instruction, str]]:
    written = [(n, _keyword_as_written(n)) for n in m.ast.instructions]
    counts = Counter(k.isupper() for _, k in written if k.isupper() or k.islower())
    upper = counts[True] >= counts[False]
    majority = "uppercase" if upper else "lowercase"
    for node, keyword in written:
        if keyword.isupper() if upper else keyword.islower():
            continue
        yield (
            node,
            f"Command '{keyword}' should match the case of the command majority "
            f"({majority})",
        )


def _duplicate_stage_name(m: _Model) -> Iterator[tuple[Instruction, str]]:
    seen: set[str] = set()
    for stage in m.stages:
        if not stage.name:
            continue
        name = stage.name.lower()
        if name in seen:
            yield (
                stage.from_node,
                f"Duplicate stage name {go_quote(name)}, stage names should be unique",
            )
        seen.add(name)


def _reserved_stage_name(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        if stage.name and stage.name.lower() in ("scratch", "context"):
            yield (
                stage.from_node,
                "Stage name should not use the same name as reserved stage "
                + go_quote(stage.name.lower()),
            )


def _json_args_recommended(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        # A stage that sets its own SHELL chose shell form knowingly.
        if any(n.keyword == "shell" for n in stage.nodes):
            continue
        for node in stage.nodes:
            if node.keyword in ("cmd", "entrypoint") and not node.json and node.args:
                yield (
                    node,
                    f"JSON arguments recommended for {node.keyword.upper()} to "
                    "prevent unintended behavior related to OS signals",
                )


def _maintainer_deprecated(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for node in m.ast.instructions:
        if node.keyword == "maintainer":
            yield node, "Maintainer instruction is deprecated in favor of using label"


def _variables(word: str) -> set[str]:
    """Names a word refers to, but those with a default or a check
    (``${V:-x}``, ``${V+x}``, ``${V?msg}``): those are not undefined uses."""
    names = used_variables(word, {})
    guarded = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?[-+?]", word))
    return {n for n in names if n not in guarded and not n.isdigit()}


def _undefined_arg_in_from(m: _Model) -> Iterator[tuple[Instruction, str]]:
    known = set(m.global_args) | set(PLATFORM_ARGS)
    for stage in m.stages:
        node = stage.from_node
        flags = [f.partition("=")[2] for f in node.flags if f.startswith("--platform=")]
        for word in [stage.base, *flags]:
            for name in sorted(_variables(word) - known):
                message = f"FROM argument '{name}' is not declared"
                hint = suggest(name, known)
                yield node, message + (f" ({hint})" if hint else "")


def _workdir_relative_path(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        absolute = False
        for node in stage.nodes:
            if node.keyword != "workdir" or not node.args:
                continue
            path = str(node.args[0])
            if path.startswith(("/", "$")):
                absolute = True
            elif not absolute:
                yield (
                    node,
                    f"Relative workdir {go_quote(path)} can have unexpected results "
                    "if the base image changes",
                )


# Instructions whose words buildpy expands (convert.py), so whose variables
# must be defined; RUN, CMD, ENTRYPOINT and HEALTHCHECK are the shell's.
_EXPANDED = ("add", "copy", "env", "label", "workdir", "user", "volume", "expose")
_EXPANDED += ("stopsignal", "arg")


def _undefined_var(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        defined = {"PATH", *PLATFORM_ARGS, "TARGETSTAGE"}
        by_name = {s.name.lower(): s for s in m.stages if s.name}
        # Up the chain of stages to the image at its bottom.
        bottom, seen = stage, {id(stage)}
        while (parent := by_name.get(bottom.base.lower())) and id(parent) not in seen:
            defined |= _declared(parent.nodes)
            bottom = parent
            seen.add(id(parent))
        defined |= {e.partition("=")[0] for e in m.base_env(bottom.base) or ()}
        for node in stage.nodes:
            if node.keyword in _EXPANDED:
                for word in _expanded_words(node):
                    for name in sorted(_variables(word) - defined):
                        hint = suggest(name, defined)
                        message = f"Usage of undefined variable '${name}'"
                        if hint:  # "did you mean X?": BuildKit names it $X
                            message += f" ({hint.replace('mean ', 'mean $', 1)})"
                        yield node, message
            defined |= _declared([node])


def _expanded_words(node: Instruction) -> list[str]:
    words = _words(node)
    if node.keyword in ("env", "label"):
        return [w for i, w in enumerate(words) if i % 3 == 1]
    if node.keyword == "arg":
        return [w.partition("=")[2] for w in words]
    if node.keyword in ("add", "copy"):
        return [w for w in words if not w.startswith("<<")]
    return words


def _declared(nodes: Sequence[Instruction]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        words = _words(node)
        if node.keyword == "arg":
            names |= {w.partition("=")[0] for w in words}
        elif node.keyword == "env":
            names |= {words[i] for i in range(0, len(words), 3)}
    return names


def _multiple_instructions(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        for keyword in ("cmd", "entrypoint", "healthcheck"):
            nodes = [n for n in stage.nodes if n.keyword == keyword]
            for node in nodes[:-1]:
                yield (
                    node,
                    f"Multiple {keyword.upper()} instructions should not be used in "
                    "the same stage because only the last one will be used",
                )


def _legacy_key_value(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for node in m.ast.instructions:
        if node.keyword in ("env", "label") and node.args[2:3] == [""]:
            kw = node.keyword.upper()
            yield (
                node,
                f'"{kw} key=value" should be used instead of legacy "{kw} key value" '
                "format",
            )


def _invalid_base_image_platform(m: _Model) -> Iterator[tuple[Instruction, str]]:
    names = m.stage_names()
    for stage in m.stages:
        if stage.base.lower() in names or stage.from_node.flags:
            continue
        found = m.base_platform(stage.base)
        if found is not None and found != m.platform:
            yield (
                stage.from_node,
                f"Base image {stage.base} was pulled with platform "
                f"{go_quote(found)}, expected {go_quote(m.platform)} for current build",
            )


def _redundant_target_platform(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        for flag in stage.from_node.flags:
            if flag in ("--platform=$TARGETPLATFORM", "--platform=${TARGETPLATFORM}"):
                written = flag.partition("=")[2]  # BuildKit names it as written
                yield (
                    stage.from_node,
                    f"Setting platform to predefined {written} in FROM is "
                    "redundant as this is the default behavior",
                )


_SECRET_RE = re.compile(
    r"(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|"
    r"secret|token)(?:_|$)",
    re.IGNORECASE,
)
_PUBLIC_RE = re.compile(r"(?:_|^)public(?:_|$)", re.IGNORECASE)


def _secrets_used_in_arg_or_env(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for node in m.ast.instructions:
        if node.keyword not in ("arg", "env"):
            continue
        words = _words(node)
        if node.keyword == "arg":
            names = [w.partition("=")[0] for w in words]
        else:
            names = words[0::3]
        for name in names:
            if _SECRET_RE.search(name) and not _PUBLIC_RE.search(name):
                yield (
                    node,
                    "Do not use ARG or ENV instructions for sensitive data "
                    f"({node.keyword.upper()} {go_quote(name)})",
                )


_REFERENCE_RE = re.compile(
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


def _invalid_default_arg_in_from(m: _Model) -> Iterator[tuple[Instruction, str]]:
    defaults = {k: v for k, v in m.global_args.items() if v is not None}
    names = m.stage_names()
    for stage in m.stages:
        if "$" not in stage.base:
            continue
        if _variables(stage.base) - set(m.global_args) - set(PLATFORM_ARGS):
            continue  # an undeclared ARG: UndefinedArgInFrom says so
        try:
            value = process_word(stage.base, defaults)
        except ShellError:
            value = ""
        if value.lower() in names or value == "scratch":
            continue
        if not value or not _REFERENCE_RE.fullmatch(value):
            yield (
                stage.from_node,
                f"Default value for ARG {stage.base} results in empty or invalid "
                "base image name",
            )


def _from_platform_flag_const(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for stage in m.stages:
        for flag in stage.from_node.flags:
            name, _, value = flag[2:].partition("=")
            if name != "platform" or "$" in value:
                continue
            # A stage named for its platform ("build-amd64") pins it on purpose.
            arch = value.split("/")[1] if "/" in value else value
            if stage.name and arch and arch in stage.name.lower():
                continue
            yield (
                stage.from_node,
                f"FROM --platform flag should not use constant value {go_quote(value)}",
            )


def _copy_ignored_file(m: _Model) -> Iterator[tuple[Instruction, str]]:
    if m.ignore is None:
        return
    for node in m.ast.instructions:
        if node.keyword not in ("copy", "add"):
            continue
        if any(f.startswith("--from") for f in node.flags):
            continue
        command = "Add" if node.keyword == "add" else "Copy"
        for source in _words(node)[:-1]:
            path = source.lstrip("/").removeprefix("./")
            if path and not path.startswith("<<") and m.ignore.excluded(path):
                yield (
                    node,
                    f"Attempting to {command} file {go_quote(source)} that is "
                    "excluded by .dockerignore",
                )


_DIRECTIVE_RE = re.compile(r"#\s*(syntax|escape|check)\s*=", re.IGNORECASE)


def _invalid_definition_description(m: _Model) -> Iterator[tuple[Instruction, str]]:
    nodes = [s.from_node for s in m.stages if s.name]
    nodes += [n for n in m.ast.instructions if n.keyword == "arg"]
    for node in sorted(nodes, key=lambda n: n.start_line):
        above = node.start_line - 2
        if above < 0 or not m.lines[above].lstrip().startswith("#"):
            continue
        if _DIRECTIVE_RE.match(m.lines[above].strip()):
            continue
        comment = m.lines[above].lstrip()[1:].strip()
        if node.keyword == "from":
            names = [_words(node)[2].lower()]  # BuildKit's stage names are lower
        else:
            names = [w.partition("=")[0] for w in _words(node)]
        if comment.split(" ", 1)[0] not in names:
            example = names[0] if len(names) == 1 else "<arg_key>"
            yield (
                node,
                f"Comment for {node.keyword.upper()} should follow the format: "
                f"`# {example} <description>`",
            )


def _expose_proto_casing(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for node in m.ast.instructions:
        if node.keyword != "expose":
            continue
        for port in _words(node):
            proto = port.partition("/")[2]
            if proto and proto != proto.lower():
                yield (
                    node,
                    f"Defined protocol '{port}' in EXPOSE instruction should be "
                    "lowercase",
                )


def _expose_invalid_format(m: _Model) -> Iterator[tuple[Instruction, str]]:
    for node in m.ast.instructions:
        if node.keyword != "expose":
            continue
        for port in _words(node):
            if ":" in port:
                yield (
                    node,
                    "EXPOSE instruction should not define an IP address or host-port "
                    f"mapping, found '{port}'",
                )


def _rule(
    name: str,
    description: str,
    check: Check,
    experimental: bool = False,
    documented: bool = True,
) -> Rule:
    """A rule and its documentation page (none when BuildKit gives none)."""
    slug = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    slug = slug.replace("j-s-o-n", "json")
    url = f"{DOCS}{slug}/" if documented else ""
    return Rule(name, description, url, check, experimental)


# The rules of the Dockerfile reference's build checks page, in its order.
RULES: tuple[Rule, ...] = (
    _rule("StageNameCasing", "Stage names should be lowercase", _stage_name_casing),
    _rule(
        "FromAsCasing",
        "The 'as' keyword should match the case of the 'from' keyword",
        _from_as_casing,
    ),
    _rule(
        "NoEmptyContinuation",
        "Empty continuation lines will become errors in a future release",
        _no_empty_continuation,
    ),
    _rule(
        "ConsistentInstructionCasing",
        "All commands within the Dockerfile should use the same casing (either "
        "upper or lower)",
        _consistent_instruction_casing,
    ),
    _rule("DuplicateStageName", "Stage names should be unique", _duplicate_stage_name),
    _rule(
        "ReservedStageName",
        "Reserved words should not be used as stage names",
        _reserved_stage_name,
    ),
    _rule(
        "JSONArgsRecommended",
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended "
        "behavior related to OS signals",
        _json_args_recommended,
    ),
    _rule(
        "MaintainerDeprecated",
        "The MAINTAINER instruction is deprecated, use a label instead to define "
        "an image author",
        _maintainer_deprecated,
    ),
    _rule(
        "UndefinedArgInFrom",
        "FROM command must use declared ARGs",
        _undefined_arg_in_from,
    ),
    _rule(
        "WorkdirRelativePath",
        "Relative workdir without an absolute workdir declared within the build "
        "can have unexpected results if the base image changes",
        _workdir_relative_path,
    ),
    _rule(
        "UndefinedVar",
        "Variables should be defined before their use",
        _undefined_var,
    ),
    _rule(
        "MultipleInstructionsDisallowed",
        "Multiple instructions of the same type should not be used in the same stage",
        _multiple_instructions,
    ),
    _rule(
        "LegacyKeyValueFormat",
        "Legacy key/value format with whitespace separator should not be used",
        _legacy_key_value,
    ),
    _rule(
        "InvalidBaseImagePlatform",
        "Base image platform does not match expected target platform",
        _invalid_base_image_platform,
        documented=False,  # BuildKit's rule has no URL
    ),
    _rule(
        "RedundantTargetPlatform",
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as "
        "this is the default behavior",
        _redundant_target_platform,
    ),
    _rule(
        "SecretsUsedInArgOrEnv",
        "Sensitive data should not be used in the ARG or ENV commands",
        _secrets_used_in_arg_or_env,
    ),
    _rule(
        "InvalidDefaultArgInFrom",
        "Default value for global ARG results in an empty or invalid base image name",
        _invalid_default_arg_in_from,
    ),
    _rule(
        "FromPlatformFlagConstDisallowed",
        "FROM --platform flag should not use a constant value",
        _from_platform_flag_const,
    ),
    _rule(
        "CopyIgnoredFile",
        "Attempting to Copy file that is excluded by .dockerignore",
        _copy_ignored_file,
        experimental=True,
    ),
    _rule(
        "InvalidDefinitionDescription",
        "Comment for build stage or argument should follow the format: `# "
        "<arg/stage name> <description>`. If this is not intended to be a "
        "description comment, add an empty line or comment between the "
        "instruction and the comment.",
        _invalid_definition_description,
        experimental=True,
    ),
    _rule(
        "ExposeProtoCasing",
        "Protocol in EXPOSE instruction should be lowercase",
        _expose_proto_casing,
    ),
    _rule(
        "ExposeInvalidFormat",
        "IP address and host-port mapping should not be used in EXPOSE "
        "instruction. This will become an error in a future release",
        _expose_invalid_format,
    ),
)
RULE_NAMES = tuple(r.name for r in RULES)


def lint(
    text: str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    dockerignore: Sequence[str] = (),
    base_env: Callable[[str], Sequence[str] | None] | None = None,
    base_platform: Callable[[str], str | None] | None = None,
    platform: str = "linux/amd64",
    ast: AST | None = None,
) -> LintResult:
    """Run every enabled rule on a Dockerfile. Raises DockerfileError when the
    file does not parse or its check directive is malformed.

    ``base_env(ref)`` gives a base image's ``KEY=VALUE`` env (None: unknown),
    ``base_platform(ref)`` its ``os/arch`` (None: unknown).
    """
    ast = ast or parse(text, filename=filename)
    directive = (build_args or {}).get("BUILDKIT_DOCKERFILE_CHECK")
    if directive is None:
        directive = ast.directives.get("check", "")
    config = parse_check_directive(directive, filename)
    model = _model(
        ast,
        text,
        IgnoreMatcher(dockerignore) if dockerignore else None,
        base_env or (lambda ref: None),
        base_platform or (lambda ref: None),
        platform,
    )
    findings = []
    for rule in RULES:
        if not config.enabled(rule):
            continue
        for node, message in rule.check(model):
            hint = f"{rule.description} ({rule.url})" if rule.url else rule.description
            findings.append(
                Finding(
                    rule.name, message, node.lines, hint, rule.url, rule.description
                )
            )
    findings.sort(key=lambda f: f.lines)
    return LintResult(findings, config.error)
