"""Conversion of real Dockerfiles with a fake image store."""

from __future__ import annotations

import pytest

from frontend import BuildPlan, ResolvedImage, convert
from solver.graph import (
    BuildGraph,
    ContextSource,
    CopyAction,
    ExecOp,
    FileOp,
    ImageSource,
    MkdirAction,
    MkfileAction,
    ScratchSource,
)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = ResolvedImage(
    "busybox:latest",
    "sha256:" + "b" * 64,
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created_by": "base"}],
    },
)
PYTHON = ResolvedImage(
    "python:3.12",
    "sha256:" + "c" * 64,
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["LANG=C.UTF-8"], "Cmd": ["python3"], "WorkingDir": "/"},
    },
)
IMAGES = {"busybox": BUSYBOX, "busybox:latest": BUSYBOX, "python:3.12": PYTHON}
calls: list[str] = []


def resolve(ref: str) -> ResolvedImage:
    calls.append(ref)
    try:
        return IMAGES[ref]
    except KeyError:
        raise LookupError(ref) from None


def build(text: str, **kwargs) -> BuildPlan:
    calls.clear()
    return convert(text, resolve_image=resolve, **kwargs)


def history(plan: BuildPlan) -> list[tuple[str, bool]]:
    return [(h.created_by, h.empty_layer) for h in plan.history]


def test_single_stage_graph_config_and_history() -> None:
    plan = build('FROM busybox\nWORKDIR /app\nCOPY a.txt ./\nRUN echo hi\nCMD ["sh"]\n')
    run = plan.final
    assert isinstance(run.op, ExecOp)
    assert run.op.args == ("/bin/sh", "-c", "echo hi")
    assert run.op.cwd == "/app"
    assert run.op.env == ("PATH=/bin",)
    assert run.op.network == "host"
    assert run.meta.name == "[4/5] RUN echo hi"
    assert run.meta.lines == (4, 4)
    copy = run.inputs[0]
    assert copy.op == FileOp((CopyAction(("a.txt",), "/app/", source=1),))
    assert copy.inputs[1].op == ContextSource(excludes=())
    mkdir = copy.inputs[0]
    assert mkdir.op == FileOp((MkdirAction("/app"),))
    assert mkdir.inputs[0].op == ImageSource("busybox:latest", BUSYBOX.digest)
    assert plan.config == {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/app"},
    }
    assert history(plan) == [
        ("WORKDIR /app", False),
        ("COPY a.txt ./ # buildkit", False),
        ("RUN /bin/sh -c echo hi # buildkit", False),
        ('CMD ["sh"]', True),
    ]
    assert plan.history[2].vertex is run
    assert plan.history[3].vertex is None
    assert plan.base == BUSYBOX
    assert plan.stages == ["0"]


def test_scratch_gets_default_path_and_no_base() -> None:
    plan = build("FROM scratch\nCOPY . /\n")
    assert plan.base is None
    assert plan.config["config"]["Env"] == [DEFAULT_PATH]
    assert plan.final.inputs[0].op == ScratchSource()


def test_base_without_path_gets_default_path() -> None:
    plan = build("FROM python:3.12\nENV A=1\n")
    assert plan.config["config"]["Env"] == ["LANG=C.UTF-8", DEFAULT_PATH, "A=1"]


def test_multi_stage_only_needed_stages_are_converted() -> None:
    plan = build(
        "FROM busybox AS build\n"
        "RUN make\n"
        "FROM python:3.12 AS unused\n"
        "RUN never\n"
        "FROM scratch\n"
        "COPY --from=build /out /out\n"
        "COPY --from=0 /etc/passwd /etc/\n"
    )
    assert calls == ["busybox"]  # python:3.12 is never resolved
    assert plan.stages == ["build", "2"]
    graph = BuildGraph(plan.final)
    names = sorted(v.meta.name for v in graph.topological())
    assert "[build 2/2] RUN make" in names
    assert not any("never" in n for n in names)
    first = plan.final.inputs[0]
    assert first.meta.name == "[stage-2 2/3] COPY --from=build /out /out"
    assert first.inputs[1].op == ExecOp(
        ("/bin/sh", "-c", "make"), ("PATH=/bin",), "/", "", "host"
    )
    assert plan.final.inputs[1] is first.inputs[1]


def test_from_stage_inherits_config_and_history() -> None:
    plan = build(
        "FROM busybox AS base\nENV A=1\nUSER nobody\nFROM base\nRUN id\n",
        target=None,
    )
    assert plan.config["config"]["User"] == "nobody"
    assert plan.final.op.user == "nobody"
    assert history(plan) == [
        ("ENV A=1", True),
        ("USER nobody", True),
        ("RUN /bin/sh -c id # buildkit", False),
    ]
    assert plan.base == BUSYBOX


def test_target_selects_stage() -> None:
    plan = build("FROM busybox AS a\nRUN a\nFROM scratch AS b\n", target="a")
    assert plan.final.op.args[-1] == "a"
    assert plan.stages == ["a"]


def test_global_args_build_args_and_history_prefix() -> None:
    plan = build(
        "ARG TAG=latest\n"
        "ARG UNUSED_GLOBAL=x\n"
        "FROM busybox:${TAG}\n"
        "ARG TAG\n"
        "ARG V=1\n"
        "ARG EMPTY\n"
        "RUN echo $TAG $V\n",
        build_args={"V": "2", "NOPE": "1"},
    )
    assert calls == ["busybox:latest"]
    run = plan.final.op
    assert run.env == ("PATH=/bin", "TAG=latest", "V=2")
    assert history(plan)[-1] == (
        "RUN |3 TAG=latest V=2 EMPTY= /bin/sh -c echo $TAG $V # buildkit",
        False,
    )
    assert ("ARG V=1", True) in history(plan)
    assert plan.warnings == ["build arg NOPE was not used"]


def test_the_builders_own_build_args_are_never_unused() -> None:
    given = {
        "BUILDKIT_INLINE_CACHE": "1",
        "BUILDKIT_DOCKERFILE_CHECK": "skip=all",
        "SOURCE_DATE_EPOCH": "0",
        "HTTP_PROXY": "http://proxy",
        "OTHER": "x",
    }
    plan = build("FROM busybox\n", build_args=given)
    assert plan.warnings == ["build arg OTHER was not used"]


def test_global_arg_invisible_in_stage_without_redeclaring() -> None:
    plan = build("ARG X=1\nFROM busybox\nENV Y=${X:-unset}\n")
    assert plan.config["config"]["Env"][-1] == "Y=unset"


def test_platform_args_predefined() -> None:
    plan = build(
        "FROM busybox\nARG TARGETARCH\nENV A=$TARGETARCH\n", platform=("linux", "arm64")
    )
    assert plan.config["config"]["Env"][-1] == "A=arm64"


def test_env_expansion_sees_state_before_instruction() -> None:
    plan = build("FROM busybox\nENV a=x\nENV a=y b=$a\nENV c ${a}-$b\n")
    env = plan.config["config"]["Env"]
    assert env == ["PATH=/bin", "a=y", "b=x", "c=y-x"]
    assert history(plan)[1] == ("ENV a=y b=x", True)


def test_config_instructions() -> None:
    plan = build(
        "FROM busybox\n"
        'LABEL a=b "c d"="e f"\n'
        "EXPOSE 8000 53/udp\n"
        "VOLUME /data\n"
        "STOPSIGNAL SIGTERM\n"
        'SHELL ["/bin/bash", "-c"]\n'
        "HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/\n"
        "ONBUILD RUN echo child\n"
        "MAINTAINER me\n"
        "ENTRYPOINT exec server\n"
    )
    inner = plan.config["config"]
    assert inner["Labels"] == {"a": "b", "c d": "e f"}
    assert inner["ExposedPorts"] == {"8000/tcp": {}, "53/udp": {}}
    assert inner["Volumes"] == {"/data": {}}
    assert inner["StopSignal"] == "SIGTERM"
    assert inner["Shell"] == ["/bin/bash", "-c"]
    assert inner["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://x/"],
        "Interval": 5_000_000_000,
        "Retries": 3,
    }
    assert inner["OnBuild"] == ["RUN echo child"]
    assert inner["Entrypoint"] == ["/bin/bash", "-c", "exec server"]
    assert "Cmd" not in inner  # ENTRYPOINT clears the base's CMD
    assert plan.config["author"] == "me"
    assert [h for h, _ in history(plan)] == [
        "LABEL a=b c d=e f",
        "EXPOSE map[53/udp:{} 8000/tcp:{}]",
        "VOLUME [/data]",
        "STOPSIGNAL SIGTERM",
        "SHELL [/bin/bash -c]",
        'HEALTHCHECK &{["CMD-SHELL" "curl -f http://x/"] "5s" "0s" "0s" '
        "\"0s\" '\\x03'}",
        "ONBUILD RUN echo child",
        "MAINTAINER me",
        'ENTRYPOINT ["/bin/bash" "-c" "exec server"]',
    ]


def test_entrypoint_keeps_cmd_set_in_same_stage() -> None:
    plan = build('FROM busybox\nCMD ["a"]\nENTRYPOINT ["b"]\n')
    assert plan.config["config"]["Cmd"] == ["a"]


def test_onbuild_triggers_of_base_run_after_from() -> None:
    IMAGES["parent"] = ResolvedImage(
        "parent:latest",
        "sha256:" + "d" * 64,
        {"config": {"OnBuild": ["RUN echo triggered"], "Env": ["PATH=/bin"]}},
    )
    plan = build("FROM parent\n")
    assert plan.final.op.args == ("/bin/sh", "-c", "echo triggered")
    assert "OnBuild" not in plan.config["config"]


def test_run_network_and_exec_form() -> None:
    plan = build('FROM busybox\nRUN --network=none ["echo", "hi"]\n', network="default")
    assert plan.final.op.args == ("echo", "hi")
    assert plan.final.op.network == "none"
    plan = build("FROM busybox\nRUN --network=default true\n", network="none")
    assert plan.final.op.network == "none"


def test_run_single_heredoc_is_the_script() -> None:
    plan = build("FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\nCMD x\n")
    assert plan.final.op.args == ("/bin/sh", "-c", "echo a\necho b\n")
    assert plan.final.meta.lines == (2, 5)


def test_run_heredoc_with_shebang_is_a_mounted_program() -> None:
    plan = build("FROM busybox\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n")
    op = plan.final.op
    assert op.args == ("/dev/pipes/EOF",)
    (mount,) = op.mounts
    assert (mount.type, mount.target, mount.source, mount.readonly) == (
        "bind",
        "/dev/pipes",
        "/",
        True,
    )
    script = plan.final.inputs[mount.input].op
    assert script.actions[0].data == "#!/usr/bin/env python3\nprint(1)\n"
    assert script.actions[0].mode == 0o755


def test_run_heredoc_with_command_goes_to_shell() -> None:
    plan = build("FROM busybox\nRUN cat <<EOF > /f\nhi $X\nEOF\n")
    assert plan.final.op.args == ("/bin/sh", "-c", "cat <<EOF > /f\nhi $X\nEOF\n")


def test_copy_heredoc_is_mkfile_with_expansion() -> None:
    plan = build(
        "FROM busybox\nENV N=world\nCOPY <<A <<'B' /etc/\nhello $N\nA\nraw $N\nB\n"
    )
    assert plan.final.op == FileOp(
        (
            MkfileAction("/etc/A", "hello world\n"),
            MkfileAction("/etc/B", "raw $N\n"),
        )
    )
    assert len(plan.final.inputs) == 1


def test_copy_flags_expanded_and_dest_resolved() -> None:
    plan = build(
        "FROM busybox\nWORKDIR /w\nENV U=app D=sub\n"
        "COPY --chown=$U:$U --chmod=0640 --exclude=*.pyc src $D\n"
        "ADD x.tar.gz /opt/\n"
    )
    add = plan.final.op.actions[0]
    assert add == CopyAction(("x.tar.gz",), "/opt/", unpack=True)
    copy = plan.final.inputs[0].op.actions[0]
    assert copy == CopyAction(
        ("src",), "/w/sub", chown="app:app", chmod="0640", excludes=("*.pyc",)
    )
    # One shared context vertex with the .dockerignore patterns.
    ctx = {plan.final.inputs[1], plan.final.inputs[0].inputs[1]}
    assert len(ctx) == 1


def test_dockerignore_patterns_go_to_context() -> None:
    plan = build("FROM busybox\nCOPY . /\n", dockerignore=["*.md", "!README.md"])
    assert plan.final.inputs[1].op == ContextSource(excludes=("*.md", "!README.md"))


def test_copy_parents_keeps_sources_as_written() -> None:
    plan = build(
        "FROM busybox AS b\nRUN x\nFROM busybox\nENV D=x\n"
        "COPY --parents ./$D/./y/*.txt ./z/a /dst/\n"
        "COPY --parents=false a /n/\n"
        "COPY --from=b --parents /app/./dist /srv/\n"
    )
    from_stage = plan.final.op.actions[0]
    assert from_stage == CopyAction(("/app/./dist",), "/srv/", parents=True)
    plain = plan.final.inputs[0].op.actions[0]
    assert plain == CopyAction(("a",), "/n/")
    context = plan.final.inputs[0].inputs[0].op.actions[0]
    # The pivot /./ survives conversion: fileops reads it.
    assert context == CopyAction(("./x/./y/*.txt", "./z/a"), "/dst/", parents=True)


def test_copy_parents_changes_the_digest() -> None:
    with_parents = build("FROM busybox\nCOPY --parents x/a /d/\n").final.digest
    assert with_parents != build("FROM busybox\nCOPY x/a /d/\n").final.digest


def test_copy_from_image() -> None:
    plan = build("FROM scratch\nCOPY --from=python:3.12 /usr/bin/python3 /\n")
    assert plan.final.inputs[1].op == ImageSource("python:3.12", PYTHON.digest)


def test_workdir_owner_and_relative() -> None:
    plan = build("FROM busybox\nUSER 1000\nWORKDIR a\nWORKDIR b/../c\n")
    assert plan.final.op == FileOp((MkdirAction("/a/c", owner="1000"),))
    assert plan.config["config"]["WorkingDir"] == "/a/c"


def test_no_cache_and_stage_names() -> None:
    plan = build("FROM busybox AS build\nRUN x\n", no_cache=True)
    assert plan.final.meta.ignore_cache
    assert plan.final.meta == plan.final.meta.__class__(
        "[build 2/2] RUN x", "build", (2, 2), True
    )


@pytest.mark.parametrize("target", [None, "b"])
def test_identical_stages_share_vertices(target: str | None) -> None:
    plan = build("FROM busybox AS a\nRUN x\nFROM busybox AS b\nRUN x\n", target=target)
    assert plan.final.digest == build("FROM busybox\nRUN x\n").final.digest
