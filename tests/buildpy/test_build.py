"""The first whole build, as a user meets it: `buildpy build` on real Dockerfiles,
with real overlay snapshots and real containers, checked through what the image
holds and what the command prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, Buildpy, write_context

HELLO = REPO / "examples" / "hello"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def inspect(buildpy: Buildpy, name: str) -> dict:
    return json.loads(buildpy.run("inspect", name).stdout)[0]


def step_lines(stderr: str, word: str) -> list[str]:
    """The names of the steps whose block ends with ``word`` (CACHED or DONE)."""
    names: dict[str, str] = {}
    ended = []
    for line in stderr.splitlines():
        match = re.match(r"#(\d+) (.*)", line)
        if not match:
            continue
        number, rest = match.groups()
        if rest.startswith("["):
            names.setdefault(number, rest)
        elif rest.split()[0] == word:
            ended.append(names.get(number, number))
    return ended


def instructions(stderr: str, word: str) -> list[str]:
    """The Dockerfile instructions (``RUN make``) of the steps ending in ``word``."""
    found = []
    for name in step_lines(stderr, word):
        match = re.match(r"\[(?:\S+ )?\d+/\d+\] (.*)", name)
        if match:
            found.append(match.group(1))
    return found


def test_hello_example_builds_the_image_docker_would(busybox: Buildpy, tmp_path):
    context = tmp_path / "hello"
    shutil.copytree(HELLO, context)
    busybox.build(context, "-t", "hello:1")

    image = inspect(busybox, "hello:1")
    config = image["Config"]["config"]
    assert "APP_HOME=/app" in config["Env"]
    assert any(e.startswith("PATH=") for e in config["Env"])
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "app"
    assert config["Cmd"] == ["hello"]
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Labels"] == {"org.opencontainers.image.title": "hello"}
    history = image["Config"]["history"]
    created_by = [h.get("created_by", "") for h in history]
    # The base image's one entry, then one per instruction of the final stage.
    assert len(history) == 1 + 8
    assert created_by[-1].startswith("CMD")
    assert "COPY /src/message.txt /src/lines.txt ./ # buildkit" in created_by
    layers = [h for h in history if not h.get("empty_layer")]
    assert len(layers) == len(image["Manifest"]["layers"])
    assert len(image["Config"]["rootfs"]["diff_ids"]) == len(layers)

    out = tmp_path / "out"
    busybox.build(context, "-o", f"type=local,dest={out}")
    message = (out / "app/message.txt").read_text()
    assert (
        message
        == "hello from buildkitsandbox\nThis file came from the build context.\n"
    )
    assert (out / "app/lines.txt").read_text().strip() == "2"
    hello = out / "usr/local/bin/hello"
    assert hello.stat().st_mode & 0o777 == 0o755
    # .dockerignore kept the Dockerfile out of the context, so COPY cannot see it.
    assert not (out / "app/Dockerfile").exists()


def test_second_build_runs_no_step(busybox: Buildpy, tmp_path):
    context = tmp_path / "hello"
    shutil.copytree(HELLO, context)
    first = busybox.build(context, "-t", "hello:1")
    assert step_lines(first.stderr, "DONE")
    first_id = inspect(busybox, "hello:1")["Id"]
    second = busybox.build(context, "-t", "hello:1")
    assert instructions(second.stderr, "DONE") == []
    cached = step_lines(second.stderr, "CACHED")
    assert any("RUN" in s for s in cached) and any("COPY" in s for s in cached)
    # Nothing ran, so nothing changed: the same image, to the byte.
    assert inspect(busybox, "hello:1")["Id"] == first_id


def test_changed_file_reruns_exactly_the_steps_that_read_it(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {
            "a.txt": "a\n",
            "b.txt": "b\n",
            "Dockerfile": (
                "FROM busybox\n"
                "RUN echo base > /base\n"
                "COPY a.txt /a.txt\n"
                "RUN cat /a.txt > /a.copy\n"
                "COPY b.txt /b.txt\n"
            ),
        },
    )
    busybox.build(context, "-t", "t")
    # Touching without changing content re-runs nothing.
    os.utime(context / "a.txt", (1, 1))
    touched = busybox.build(context, "-t", "t")
    assert instructions(touched.stderr, "DONE") == []

    (context / "a.txt").write_text("A\n")
    changed = busybox.build(context, "-t", "t")
    ran = instructions(changed.stderr, "DONE")
    assert ran == ["COPY a.txt /a.txt", "RUN cat /a.txt > /a.copy", "COPY b.txt /b.txt"]
    assert "RUN echo base > /base" in instructions(changed.stderr, "CACHED")


def test_no_cache_runs_every_step(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo hi > /x\n"}
    )
    busybox.build(context)
    again = busybox.build(context, "--no-cache")
    assert "RUN echo hi > /x" in instructions(again.stderr, "DONE")


def test_oci_archive_is_read_by_skopeo_and_umoci(busybox: Buildpy, tmp_path):
    if not shutil.which("skopeo") or not shutil.which("umoci"):
        pytest.skip("skopeo and umoci are installed by .ci/run")
    import subprocess

    context = tmp_path / "hello"
    shutil.copytree(HELLO, context)
    archive = tmp_path / "hello.tar"
    busybox.build(context, "-t", "hello:1", "-o", f"type=oci,dest={archive}")
    # Written like any new file (umask), not private as a temporary file is.
    assert archive.stat().st_mode & 0o777 == 0o666 & ~_umask()
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{archive}"],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(inspected.stdout)
    assert info["Os"] == "linux" and len(info["Layers"]) >= 2

    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)],
        check=True,
        capture_output=True,
    )
    message = (bundle / "rootfs/app/message.txt").read_text()
    assert message.startswith("hello from buildkitsandbox")
    assert (bundle / "rootfs/bin/busybox").exists()


def test_docker_archive_loads_into_podman(busybox: Buildpy, tmp_path):
    if not shutil.which("podman"):
        pytest.skip("podman is installed by .ci/run")
    import subprocess

    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo hi > /hi\n"}
    )
    archive = tmp_path / "img.tar"
    busybox.build(context, "-t", "loadme:1", "-o", f"type=docker,dest={archive}")
    # podman wants a run root shorter than 50 characters.
    storage = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    podman = [
        "podman",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
    ]
    try:
        loaded = subprocess.run(
            [*podman, "load", "-i", str(archive)], capture_output=True, text=True
        )
        assert loaded.returncode == 0, loaded.stderr
        assert "loadme:1" in loaded.stdout
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True)
        shutil.rmtree(storage, ignore_errors=True)


def test_tar_output_is_the_root_filesystem(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN mkdir /made && echo yes > /made/it\n"},
    )
    out = tmp_path / "rootfs.tar"
    busybox.build(context, "-o", f"type=tar,dest={out}")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert {"made/it", "bin/busybox"} <= {n.removeprefix("./") for n in names}
        member = tar.extractfile(next(m for m in tar if m.name.endswith("made/it")))
        assert member is not None and member.read() == b"yes\n"


def test_target_builds_only_the_stages_it_needs(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": (
                "FROM busybox AS base\nRUN echo base > /base\n"
                "FROM base AS unused\nRUN echo never > /never\n"
                "FROM base AS wanted\nRUN echo wanted > /wanted\n"
                "FROM busybox\nRUN echo final > /final\n"
            )
        },
    )
    out = tmp_path / "out"
    result = busybox.build(
        context, "--target", "wanted", "-o", f"type=local,dest={out}"
    )
    assert (out / "base").read_text() == "base\n"
    assert (out / "wanted").read_text() == "wanted\n"
    assert not (out / "never").exists() and not (out / "final").exists()
    assert "echo never" not in result.stderr and "echo final" not in result.stderr


def test_copy_add_and_build_args(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {
            "dir/one.txt": "1\n",
            "dir/sub/two.txt": "2\n",
            "x.md": "x\n",
            "y.md": "y\n",
            "Dockerfile": (
                "ARG BASE=busybox\n"
                "FROM ${BASE}\n"
                "ARG WHO=world\n"
                "ENV GREETING=hello-${WHO}\n"
                "WORKDIR /work\n"
                "COPY dir/ ./dir/\n"
                "COPY *.md /docs/\n"
                "COPY --chown=app:app --chmod=640 x.md /owned\n"
                "ADD archive.tar.gz /unpacked/\n"
                'RUN ["sh", "-c", "echo $GREETING > /greeting"]\n'
            ),
        },
    )
    payload = tmp_path / "payload"
    write_context(payload, {"inside/file.txt": "from the archive\n"})
    with tarfile.open(context / "archive.tar.gz", "w:gz") as tar:
        tar.add(payload / "inside", arcname="inside")
    out = tmp_path / "out"
    busybox.build(context, "--build-arg", "WHO=you", "-o", f"type=local,dest={out}")
    assert (out / "work/dir/one.txt").read_text() == "1\n"
    assert (out / "work/dir/sub/two.txt").read_text() == "2\n"
    assert sorted(p.name for p in (out / "docs").iterdir()) == ["x.md", "y.md"]
    owned = (out / "owned").stat()
    assert (owned.st_uid, owned.st_gid, owned.st_mode & 0o777) == (1000, 1000, 0o640)
    assert (out / "unpacked/inside/file.txt").read_text() == "from the archive\n"
    assert (out / "greeting").read_text() == "hello-you\n"


def test_network_none_has_only_loopback(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN ls /sys/class/net > /nets\n"},
    )
    out = tmp_path / "out"
    busybox.build(context, "--network", "none", "-o", f"type=local,dest={out}")
    assert (out / "nets").read_text().split() == ["lo"]


@pytest.mark.parametrize("runtime", ["runc", "builtin"])
def test_heredoc_with_shebang_runs_as_its_own_program(
    busybox: Buildpy, tmp_path, runtime: str
):
    """RUN <<EOF with #!: the body is a program, run from /dev/pipes (BuildKit's
    place), not given to the shell; its mount leaves nothing in the layer."""
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\n"
            'RUN <<EOF\n#!/bin/sh -e\necho "run as $0" > /out\nEOF\n'
            "RUN <<-'SCRIPT'\n\t#!/bin/sh\n\techo 'tabs and $HOME kept' >> /out\n"
            "\tSCRIPT\n"
        },
    )
    out = tmp_path / "out"
    busybox.build(context, "--oci-runtime", runtime, "-o", f"type=local,dest={out}")
    assert (out / "out").read_text() == ("run as /dev/pipes/EOF\ntabs and $HOME kept\n")
    assert list((out / "dev").iterdir()) == []


# --- what a user sees when something is wrong -------------------------------------


def assert_one_clean_error(proc, code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_syntax_error_points_at_file_line_and_column(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": 'FROM busybox\nRUNN echo hi\nCMD ["sh"]\n'}
    )
    proc = busybox.build(context, check=False)
    line = assert_one_clean_error(proc, 3)
    assert "Dockerfile:2:" in line and "RUNN" in line and "RUN" in line
    assert ">>> RUNN echo hi" in proc.stderr


def test_failing_run_names_step_command_exit_code_and_output(
    busybox: Buildpy, tmp_path
):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nRUN echo about to fail && exit 7\n"},
    )
    proc = busybox.build(context, check=False)
    line = assert_one_clean_error(proc, 1)
    assert "exit code: 7" in line and "echo about to fail && exit 7" in line
    assert "about to fail" in proc.stderr.split("------")[1]
    assert ">>> RUN echo about to fail && exit 7" in proc.stderr
    # The next build works.
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo fine\n")
    busybox.build(context)


def test_missing_copy_source_is_one_line(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY nothere.txt /x\n"}
    )
    line = assert_one_clean_error(busybox.build(context, check=False), 1)
    assert "nothere.txt" in line


def test_unknown_base_image_and_stage(busybox: Buildpy, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM nosuchimage:2\n"})
    line = assert_one_clean_error(busybox.build(context, check=False), 3)
    assert "nosuchimage:2" in line

    (context / "Dockerfile").write_text("FROM busybox AS a\nRUN true\n")
    line = assert_one_clean_error(
        busybox.build(context, "--target", "b", check=False), 3
    )
    assert "b" in line


def test_bad_flags_exit_2(buildpy: Buildpy, tmp_path):
    proc = buildpy.run("build", "--jobs", "0", str(tmp_path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = buildpy.run("build", "-o", "type=nope,dest=x", str(tmp_path), check=False)
    assert proc.returncode == 2 and "type must be one of" in proc.stderr
    proc = buildpy.run("build", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_the_suite_never_reaches_beyond_loopback(busybox: Buildpy, tmp_path):
    """A FROM the store lacks would pull from Docker Hub; the suite's guard
    (BUILDPY_REGISTRY_ALLOW=loopback, set in conftest) stops it at the first
    request, and the user gets one line that says so."""
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM alpine:3\n"})
    line = assert_one_clean_error(busybox.build(context, check=False), 3)
    assert "alpine:3" in line and "refusing to contact" in line


def test_containerignore_when_there_is_no_dockerignore(busybox: Buildpy, tmp_path):
    """buildah's and podman's ignore file is read when docker's is absent; a
    .dockerignore beside it wins, as docker would read its own."""
    files = {
        "Dockerfile": "FROM busybox\nCOPY . /ctx/\n",
        ".containerignore": "secret\n",
        "secret": "s\n",
        "kept": "k\n",
    }
    context = write_context(tmp_path / "ctx", files)

    def copied() -> set[str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        busybox.build(context, "-o", f"type=local,dest={out}")
        return {p.name for p in (out / "ctx").iterdir()}

    assert copied() == {"Dockerfile", ".containerignore", "kept"}
    (context / ".dockerignore").write_text("kept\n")
    assert copied() == {"Dockerfile", ".containerignore", ".dockerignore", "secret"}
