"""The rest of issue 2's surface: flags and instructions not covered elsewhere."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildpy.engine import host_platform
from tests.conftest import REPO, Buildpy, unmount_all, write_context


def test_file_flag_root_flag_quiet_and_jobs(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"build/Custom.dockerfile": "FROM busybox\nRUN echo custom > /which\n"},
    )
    # --root given as a flag wins over $BUILDPY_ROOT.
    env_root = tmp_path / "unused-root"
    proc = busybox.run(
        "build",
        "--root",
        busybox.root,
        "-q",
        "--jobs",
        "1",
        "-f",
        context / "build/Custom.dockerfile",
        "-t",
        "custom",
        context,
        env={"BUILDPY_ROOT": str(env_root)},
    )
    image_id = proc.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert proc.stderr == ""
    assert not env_root.exists()
    inspected = json.loads(busybox.run("inspect", "custom").stdout)[0]
    assert inspected["Id"] == image_id


def test_scratch_and_config_instructions(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {
            "hello.txt": "hi\n",
            "Dockerfile": (
                "FROM busybox AS tools\n"
                'SHELL ["/bin/sh", "-ec"]\n'
                "RUN echo made > /made\n"
                "FROM scratch\n"
                "COPY --from=tools /made /bin/busybox /\n"
                "COPY hello.txt /\n"
                'ENTRYPOINT ["/busybox", "cat"]\n'
                'CMD ["/hello.txt"]\n'
                "VOLUME /data /cache\n"
                "STOPSIGNAL SIGQUIT\n"
            ),
        },
    )
    out = tmp_path / "out"
    busybox.build(context, "-t", "tiny", "-o", f"type=local,dest={out}")
    assert sorted(os.listdir(out)) == ["busybox", "hello.txt", "made"]
    busybox.build(context, "-t", "tiny")
    config = json.loads(busybox.run("inspect", "tiny").stdout)[0]["Config"]
    assert config["config"]["Entrypoint"] == ["/busybox", "cat"]
    assert config["config"]["Cmd"] == ["/hello.txt"]
    assert config["config"]["Volumes"] == {"/data": {}, "/cache": {}}
    assert config["config"]["StopSignal"] == "SIGQUIT"
    # A scratch image holds only the layers its own steps made.
    assert len(config["rootfs"]["diff_ids"]) == 2


def test_failed_step_leaves_no_mount_point_or_bundle(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN exit 3\n"}
    )
    assert busybox.build(context, check=False).returncode == 1
    assert os.listdir(busybox.root / "mnt") == []
    assert os.listdir(busybox.root / "bundles") == []


def test_tty_progress_draws_and_ends_with_a_summary(busybox: Buildpy, tmp_path):
    """--progress tty on a real terminal (script(1) gives the build a pty)."""
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo on-a-tty\n"}
    )
    command = f"{sys.executable} -m buildpy build --progress tty -t t {context}"
    proc = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        env={**os.environ, "BUILDPY_ROOT": str(busybox.root), "COLUMNS": "120"},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    assert "Building" in proc.stdout and "RUN echo on-a-tty" in proc.stdout


def test_label_load_and_platform_flags(busybox: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nLABEL a=dockerfile b=kept\nRUN echo hi > /f\n"},
    )
    busybox.build(context, "-t", "app:1")
    host = "/".join(host_platform())
    labelled = busybox.build(
        context, "-t", "app:2", "--label", "a=flag", "--label", "c", "--platform", host
    )
    assert "cache miss" not in labelled.stderr  # labels are no step's input

    def labels(name: str) -> dict[str, str]:
        config = json.loads(busybox.run("inspect", name).stdout)[0]["Config"]
        return config["config"]["Labels"]

    assert labels("app:2") == {"a": "flag", "b": "kept", "c": ""}
    assert labels("app:1") == {"a": "dockerfile", "b": "kept"}

    # -o alone leaves the store's names alone; --load adds the store beside it.
    busybox.build(context, "-t", "app:3", "-o", f"type=local,dest={tmp_path / 'a'}")
    assert busybox.run("inspect", "app:3", check=False).returncode == 2
    busybox.build(
        context, "-t", "app:4", "--load", "-o", f"type=local,dest={tmp_path / 'b'}"
    )
    assert (tmp_path / "b" / "f").read_text() == "hi\n"
    assert busybox.run("inspect", "app:4").returncode == 0

    other = busybox.build(context, "--platform", "linux/s390x", check=False)
    assert other.returncode == 2
    assert f"buildpy builds for the host's platform only ({host})" in other.stderr
    bad = busybox.build(context, "--platform", "linux", check=False)
    assert bad.returncode == 2 and "expected os/arch[/variant]" in bad.stderr


def test_add_host_lines_reach_run_steps_and_their_cache_keys(
    busybox: Buildpy, tmp_path
):
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN cat /etc/hosts > /h\n"}
    )

    def hosts(*flags: str) -> tuple[str, str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        proc = busybox.build(context, *flags, "-o", f"type=local,dest={out}")
        return (out / "h").read_text(), proc.stderr

    plain, _ = hosts()
    added, log = hosts("--add-host", "db:10.0.0.5", "--add-host", "v6=[fd00::1]")
    assert added == plain + "10.0.0.5\tdb\nfd00::1\tv6\n"
    assert "cache miss" in log  # the hosts are the step's input, as in BuildKit
    again, log = hosts()
    assert again == plain and "cache miss" not in log  # its key is the one it had

    for bad, says in [
        ("db", "expected NAME:ADDRESS"),
        ("db:10.0.0.300", "expected NAME:ADDRESS"),
        ("gw:host-gateway", "host-gateway is not supported"),
    ]:
        proc = busybox.build(context, "--add-host", bad, check=False)
        assert proc.returncode == 2 and says in proc.stderr, bad


@pytest.mark.parametrize("runtime", ["runc", "builtin"])
def test_shm_size_and_ulimit_reach_run_steps_and_their_cache_keys(
    busybox: Buildpy, tmp_path, runtime: str
):
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\nRUN ulimit -Sn > /soft; ulimit -Hn > /hard; "
            "df -k /dev/shm | tail -1 > /shm\n"
        },
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(hard, 4096) // 2

    def limits(*flags: str) -> tuple[list[str], str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        proc = busybox.build(
            context, "--oci-runtime", runtime, *flags, "-o", f"type=local,dest={out}"
        )
        shm_kib = (out / "shm").read_text().split()[1]
        seen = [(out / "soft").read_text().strip(), (out / "hard").read_text().strip()]
        return [*seen, shm_kib], proc.stderr

    plain, _ = limits("--no-cache")
    assert plain[2] == "65536"  # docker's 64 MiB
    asked = ["--ulimit", f"nofile={soft}:{soft * 2}", "--shm-size", "96m"]
    given, log = limits("--no-cache", *asked)
    assert given == [str(soft), str(soft * 2), str(96 * 1024)]
    again, log = limits(*asked)
    assert again == given and "cache miss" not in log
    other, log = limits("--ulimit", f"nofile={soft}:{soft}")
    assert "cache miss" in log and other[:2] == [str(soft), str(soft)]
    assert limits()[1].count("cache miss") == 0  # no flags: the key it had

    for bad, says in [
        ("nofile=2:1", "the soft limit is above the hard one"),
        ("files=1", "NAME one of core, cpu"),
        ("nofile=x", "limits are whole numbers"),
    ]:
        proc = busybox.build(context, "--ulimit", bad, check=False)
        assert proc.returncode == 2 and says in proc.stderr, bad
    if not _has_cap_sys_resource() and hard != resource.RLIM_INFINITY:
        proc = busybox.build(context, "--ulimit", f"nofile=1:{hard + 1}", check=False)
        assert (proc.returncode, proc.stderr) == (
            2,
            f"ERROR: --ulimit nofile: the hard limit {hard + 1} is above this "
            f"builder's ({hard}), and raising it needs CAP_SYS_RESOURCE\n",
        )


INSECURE = (
    "FROM busybox\n"
    "RUN --security=insecure grep CapEff /proc/self/status > /caps && mkdir /m "
    "&& mount -t tmpfs none /m && echo mounted > /mounted && ls /dev > /devs\n"
    "RUN grep CapEff /proc/self/status > /after\n"
)


def _cap_eff() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("CapEff:")[1].split()[0], 16)


@pytest.mark.parametrize("runtime", ["runc", "builtin"])
def test_insecure_steps_need_allow_and_run_privileged(
    busybox: Buildpy, tmp_path, runtime: str
):
    context = write_context(tmp_path / "ctx", {"Dockerfile": INSECURE})
    refused = busybox.build(context, "--oci-runtime", runtime, check=False)
    assert (refused.returncode, refused.stderr.splitlines()[-1]) == (
        2,
        "ERROR: Dockerfile:2: RUN --security=insecure needs --allow security.insecure",
    )
    out = tmp_path / "out"
    busybox.build(
        context, "--oci-runtime", runtime, "--allow", "security.insecure",
        "--no-cache", "-o", f"type=local,dest={out}",
    )  # fmt: skip
    # Every capability the builder holds, mount(2) past seccomp, host devices.
    assert int((out / "caps").read_text().split()[1], 16) == _cap_eff()
    assert (out / "mounted").read_text() == "mounted\n"
    host = {p.name for p in Path("/dev").iterdir() if p.is_char_device()}
    assert host - {"console", "ptmx"} <= set((out / "devs").read_text().split())
    # The next step is sandboxed again: docker's default set (0xa80425fb).
    assert (out / "after").read_text().split()[1] == "00000000a80425fb"


def _has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    return bool(int(status.split("CapEff:")[1].split()[0], 16) >> 24 & 1)


def test_call_targets_and_outline_build_nothing(buildpy: Buildpy, tmp_path):
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "ARG V=1\n# base the first stage\nFROM nothere:${V} AS base\n"
            "# WHO who to greet\nARG WHO=world\n"
            "RUN --mount=type=secret,id=tok,required=true echo $WHO\n"
            "FROM base\n"
        },
    )
    targets = buildpy.build(context, "--call", "targets").stdout
    assert targets == (
        "TARGET        DESCRIPTION\nbase          the first stage\n1 (default)\n"
    )
    text = buildpy.build(context, "--call", "outline", "--build-arg", "V=2").stdout
    assert text.splitlines() == [
        "TARGET:      1",
        "",
        "BUILD ARG   VALUE   DESCRIPTION",
        "V           2",
        "WHO         world   who to greet",
        "",
        "SECRET   REQUIRED",
        "tok      true",
    ]
    as_json = json.loads(buildpy.build(context, "--call=outline,format=json").stdout)
    assert as_json["secrets"] == [["tok", True]]
    # Nothing was built or pulled: the store holds no image (nothere:2 is none).
    assert buildpy.run("images").stdout.count("\n") == 1
    bad = buildpy.build(context, "--call", "outline", "--target", "nope", check=False)
    assert bad.returncode == 3 and "target stage 'nope' could not be found" in (
        bad.stderr
    )


def test_classic_builder_flags_are_taken_and_ignored(busybox: Buildpy, tmp_path):
    """docker build still takes --rm, --force-rm and --disable-content-trust
    (BuildKit ignores them); scripts pass them, in Go's flag forms."""
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo 1 > /1\n"}
    )
    plain = busybox.build(context, "-q").stdout  # dated by its step: one ID
    # --rm before the context: the context is not taken for its value.
    taken = busybox.run(
        "build", "-q", "--force-rm=true", "--disable-content-trust", "--rm", context
    )
    assert taken.stdout == plain
    assert busybox.run("build", "-q", "--rm=false", context).stdout == plain
    bad = busybox.run("build", "--rm=maybe", context, check=False)
    assert bad.returncode == 2 and "--rm: 'maybe' is not true or false" in bad.stderr


def test_cacheonly_output_records_the_steps_and_exports_nothing(
    busybox: Buildpy, tmp_path
):
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo warm > /w\n"}
    )
    warmed = busybox.build(context, "-t", "warm:1", "-o", "type=cacheonly").stderr
    assert "cache miss" in warmed
    assert "warm" not in busybox.run("images").stdout  # no name, no export
    again = busybox.build(context, "-t", "warm:1").stderr
    assert "cache miss" not in again  # the steps were recorded


def test_an_oci_layout_as_a_build_context_and_for_load(busybox: Buildpy, tmp_path):
    base = write_context(
        tmp_path / "base", {"Dockerfile": "FROM busybox\nRUN echo base > /b\n"}
    )
    layout = tmp_path / "layout"
    busybox.build(base, "-t", "base:1", "-o", f"type=oci,dest={layout},tar=false")
    app = write_context(
        tmp_path / "app", {"Dockerfile": "FROM base\nRUN cat /b > /seen\n"}
    )
    clean = Buildpy(tmp_path / "clean")  # a store that never held busybox
    try:
        out = tmp_path / "out"
        for pick in ("", ":1"):
            clean.build(
                app, "--build-context", f"base=oci-layout://{layout}{pick}",
                "-o", f"type=local,dest={out}",
            )  # fmt: skip
            assert (out / "seen").read_text() == "base\n"
        assert "base" not in clean.run("images").stdout  # loaded, named nothing
        missing = clean.build(
            app, "--build-context", f"base=oci-layout://{layout}:2", check=False
        )
        assert missing.returncode == 2 and (
            f"oci-layout://{layout}: holds 0 images where an image '2' was asked for"
            in missing.stderr
        )
        # load takes the layout directory too, with the names it records.
        loaded = clean.run("load", "-i", layout).stdout
        assert loaded == "Loaded image: base:1\n"
    finally:
        unmount_all(clean.root)
        shutil.rmtree(clean.root, ignore_errors=True)


def test_attestation_flags_take_only_no(busybox: Buildpy, tmp_path):
    context = write_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\n"})
    for flag in ("--provenance=false", "--sbom=0", "--provenance=disabled=true"):
        assert busybox.build(context, flag).returncode == 0
    asked = busybox.build(context, "--provenance=mode=max", check=False)
    assert asked.returncode == 2
    assert "does not make provenance attestations yet" in asked.stderr
    asked = busybox.build(context, "--sbom=true", check=False)
    assert asked.returncode == 2 and "sbom attestations" in asked.stderr


def test_build_context_directory_and_image(busybox: Buildpy, tmp_path):
    shared = write_context(
        tmp_path / "shared",
        {"lib/x.txt": "x1\n", "secret.key": "k\n", ".dockerignore": "*.key\n"},
    )
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": (
                "FROM tools\n"
                "COPY --from=shared . /all/\n"
                "RUN --mount=type=bind,from=shared,source=lib,target=/s "
                "cat /s/x.txt > /bound\n"
                "COPY --from=tools /bin/busybox /copied-busybox\n"
            )
        },
    )
    flags = ("--build-context", "tools=docker-image://busybox")
    flags += ("--build-context", f"shared={shared}")

    def build(*more: str) -> tuple[Path, str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        proc = busybox.build(context, *flags, *more, "-o", f"type=local,dest={out}")
        return out, proc.stderr

    out, _ = build()
    assert (out / "all/lib/x.txt").read_text() == "x1\n"
    assert not (out / "all/secret.key").exists()  # the directory's .dockerignore
    assert (out / "bound").read_text() == "x1\n"
    assert (out / "copied-busybox").exists() and (out / "bin/busybox").exists()
    assert build()[1].count("CACHED") >= 3
    (shared / "lib/x.txt").write_text("x2\n")  # the content is in the keys
    out, log = build()
    assert "file lib/x.txt changed" in log
    assert (out / "bound").read_text() == "x2\n"

    based = write_context(tmp_path / "based", {"Dockerfile": "FROM shared\n"})
    proc = busybox.build(based, *flags, check=False)
    assert proc.returncode == 3
    assert "shared is a directory (--build-context)" in proc.stderr
    for bad, says in [
        ("shared", "expected NAME=DIR"),
        (
            "x=https://example.invalid/r.git",
            "only a directory, docker-image://REF or oci-layout",
        ),
        (f"x={tmp_path / 'none'}", "not a directory"),
    ]:
        proc = busybox.build(context, "--build-context", bad, check=False)
        assert proc.returncode == 2 and says in proc.stderr, bad
