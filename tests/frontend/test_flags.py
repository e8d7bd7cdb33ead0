"""Instruction flags: RUN --mount parsed into typed specs and ExecOp mounts."""

from __future__ import annotations

import pytest

from frontend import ResolvedImage, convert
from frontend.flags import FlagError, MountSpec, parse_flags, parse_mount
from solver.graph import ContextSource, ExecMount, ExecOp, ImageSource

BUSYBOX = ResolvedImage("busybox:latest", "sha256:" + "b" * 64, {"config": {}})
GOLANG = ResolvedImage("golang:1.22", "sha256:" + "c" * 64, {"config": {}})


def resolve(ref: str) -> ResolvedImage:
    images = {"busybox": BUSYBOX, "golang:1.22": GOLANG}
    if ref in images:
        return images[ref]
    raise LookupError(ref)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("target=/src", MountSpec("bind", "/src")),
        ("type=bind,src=a,dst=/b,rw", MountSpec("bind", "/b", "a", readonly=False)),
        (
            "type=bind,source=/x,destination=/y,from=build,readwrite=false",
            MountSpec("bind", "/y", "/x", from_="build"),
        ),
        (
            "type=cache,target=/root/.cache",
            MountSpec(
                "cache",
                "/root/.cache",
                readonly=False,
                id="/root/.cache",
                sharing="shared",
                mode=0o755,
            ),
        ),
        (
            "type=cache,id=go,target=/go,sharing=locked,mode=0700,uid=1000,gid=50,ro",
            MountSpec(
                "cache",
                "/go",
                readonly=True,
                id="go",
                sharing="locked",
                mode=0o700,
                uid=1000,
                gid=50,
            ),
        ),
        (
            "type=cache,target=/c,from=golang:1.22,source=/seed",
            MountSpec(
                "cache",
                "/c",
                "/seed",
                from_="golang:1.22",
                readonly=False,
                id="/c",
                sharing="shared",
                mode=0o755,
            ),
        ),
        (
            "type=tmpfs,target=/tmp,size=64m",
            MountSpec("tmpfs", "/tmp", readonly=False, size=64 * 1024 * 1024),
        ),
        (
            "type=tmpfs,dst=/t,size=1024",
            MountSpec("tmpfs", "/t", readonly=False, size=1024),
        ),
        (
            "type=secret,id=aws",
            MountSpec("secret", "/run/secrets/aws", id="aws", mode=0o400),
        ),
        (
            "type=secret,target=/root/.npmrc,required",
            MountSpec("secret", "/root/.npmrc", id=".npmrc", mode=0o400, required=True),
        ),
        (
            "type=secret,id=tok,env=TOKEN",
            MountSpec("secret", "", id="tok", mode=0o400, env="TOKEN"),
        ),
        (
            "type=secret,src=key,target=/k,mode=0440,uid=1,gid=2,required=false",
            MountSpec("secret", "/k", id="key", mode=0o440, uid=1, gid=2),
        ),
        ("type=ssh", MountSpec("ssh", "", id="default", mode=0o600)),
        (
            "type=ssh,id=gh,target=/agent,required=true",
            MountSpec("ssh", "/agent", id="gh", mode=0o600, required=True),
        ),
        ('"target=/a,b",type=bind', MountSpec("bind", "/a,b")),
        ("TYPE=cache,Target=/c", parse_mount("type=cache,target=/c")),
    ],
)
def test_parse_mount(value: str, expected: MountSpec) -> None:
    assert parse_mount(value) == expected


def test_parse_mount_expands_values_but_from_with_globals() -> None:
    spec = parse_mount(
        "type=cache,target=$DIR,from=$STAGE",
        expand=lambda w: w.replace("$DIR", "/cache"),
        expand_from=lambda w: w.replace("$STAGE", "base"),
    )
    assert (spec.target, spec.id, spec.from_) == ("/cache", "/cache", "base")


@pytest.mark.parametrize(
    "value",
    ["type=ssh,source=/x", "type=tmpfs,target=/t,id=x", "type=secret,sharing=shared"],
)
def test_options_of_another_type_are_refused(value: str) -> None:
    with pytest.raises(FlagError, match="unexpected key"):
        parse_mount(value)


def test_parse_flags_kinds() -> None:
    flags = parse_flags(
        "add", ["--link", "--exclude=a", "--exclude=b", "--chmod=644", "--unpack=false"]
    )
    assert flags == {
        "link": True,
        "exclude": ["a", "b"],
        "chmod": "644",
        "unpack": False,
    }


def test_run_mounts_become_exec_mounts_with_inputs() -> None:
    text = (
        "FROM busybox AS base\n"
        "RUN touch /seed\n"
        "FROM busybox\n"
        "WORKDIR /app\n"
        "ARG CACHE=/var/cache/apk\n"
        "RUN --mount=type=bind,target=src,source=./lib "
        "--mount=type=bind,from=base,source=/seed,target=/s "
        "--mount=type=cache,target=$CACHE "
        "--mount=type=bind,from=golang:1.22,target=/go,source=/usr/local/go "
        "--mount=type=secret,id=tok --mount=type=ssh --mount=type=tmpfs,target=/t "
        "--network=none --security=insecure make\n"
    )
    plan = convert(text, resolve_image=resolve)
    op = plan.final.op
    assert isinstance(op, ExecOp)
    assert (op.network, op.security) == ("none", "insecure")
    inputs = plan.final.inputs
    assert isinstance(inputs[1].op, ContextSource)
    assert isinstance(inputs[2].op, ExecOp)  # the base stage's RUN
    assert inputs[2].op.args[-1] == "touch /seed"
    assert inputs[3].op == ImageSource("golang:1.22", GOLANG.digest)
    assert op.mounts == (
        ExecMount("bind", "/app/src", input=1, source="/lib"),
        ExecMount("bind", "/s", input=2, source="/seed"),
        ExecMount(
            "cache", "/var/cache/apk", readonly=False, id="/var/cache/apk", mode=0o755
        ),
        ExecMount("bind", "/go", input=3, source="/usr/local/go"),
        ExecMount("secret", "/run/secrets/tok", id="tok", mode=0o400),
        ExecMount("ssh", "/run/buildkit/ssh_agent.5", id="default", mode=0o600),
        ExecMount("tmpfs", "/t", readonly=False),
    )


def test_mount_from_stage_pulls_in_that_stage_only_when_needed() -> None:
    text = (
        "ARG FROM_STAGE=tools\n"
        "FROM busybox AS tools\nRUN echo tools\n"
        "FROM busybox AS unused\nRUN echo unused\n"
        "FROM busybox\nRUN --mount=from=$FROM_STAGE,target=/t ls /t\n"
    )
    plan = convert(text, resolve_image=resolve)
    assert plan.stages == ["tools", "2"]
    assert plan.final.op.mounts[0].input == 1


def test_same_source_twice_is_one_input() -> None:
    text = "FROM busybox\nRUN --mount=target=/a --mount=target=/b,source=x true\n"
    plan = convert(text, resolve_image=resolve)
    assert len(plan.final.inputs) == 2
    assert [m.input for m in plan.final.op.mounts] == [1, 1]


def test_mount_options_change_the_digest() -> None:
    def digest(flag: str) -> str:
        text = f"FROM busybox\nRUN {flag} true\n"
        return convert(text, resolve_image=resolve).final.digest

    plain = digest("")
    cache = digest("--mount=type=cache,target=/c")
    assert len({plain, cache, digest("--mount=type=cache,target=/c,id=x")}) == 3
    assert digest("--mount=type=secret,id=a") != digest("--mount=type=secret,id=b")


def test_link_and_keep_git_dir_are_accepted() -> None:
    text = "FROM busybox\nCOPY --link a /a\nADD --link --keep-git-dir=true b /b\n"
    plan = convert(text, resolve_image=resolve)
    assert plan.final.op.actions[0].sources == ("b",)


def test_from_platform_of_the_host_and_build_platform() -> None:
    text = (
        "FROM --platform=$BUILDPLATFORM busybox\nFROM --platform=linux/x86_64 busybox\n"
    )
    plan = convert(text, resolve_image=resolve, platform=("linux", "amd64"))
    assert plan.final.op == ImageSource("busybox:latest", BUSYBOX.digest)
