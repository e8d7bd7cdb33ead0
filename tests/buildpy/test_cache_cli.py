"""The cache as a user sees it: miss reasons in plain progress, the cache flags of
``buildpy build``, ``buildpy du`` and ``buildpy prune``, and two builds at once
on one store. Real processes, real mounts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import xxhash

from tests.conftest import REPO, Buildpy, http_server, write_context

DOCKERFILE = """\
FROM busybox
ARG V=1
COPY a.txt b.txt /app/
RUN echo v=$V > /v
"""


def ctx(tmp_path: Path, dockerfile: str = DOCKERFILE) -> Path:
    return write_context(
        tmp_path / "ctx", {"Dockerfile": dockerfile, "a.txt": "one\n", "b.txt": "b\n"}
    )


def miss_lines(output: str) -> list[str]:
    return re.findall(r"^#\d+ cache miss: (.*)$", output, re.M)


def test_plain_progress_names_the_changed_file_and_build_arg(
    busybox: Buildpy, tmp_path: Path
) -> None:
    context = ctx(tmp_path)
    first = busybox.build(context).stderr
    assert miss_lines(first) == ["no earlier record"] * 3
    (context / "a.txt").write_text("two\n")
    second = busybox.build(context, "--build-arg", "V=2").stderr
    old = xxhash.xxh3_128(b"one\n").hexdigest()[:8]
    new = xxhash.xxh3_128(b"two\n").hexdigest()[:8]
    assert miss_lines(second) == [
        f"file a.txt changed (xxh3 {old}.. -> {new}..)",
        'parent step "[3/4] COPY a.txt b.txt /app/" changed; '
        "build arg V changed (1 -> 2)",
    ]


def test_fail_on_cache_miss_and_dry_run(busybox: Buildpy, tmp_path: Path) -> None:
    context = ctx(tmp_path)
    missed = busybox.build(context, "--fail-on-cache-miss", check=False)
    assert missed.returncode == 5
    assert "ERROR: cache miss: [4/4] RUN echo v=$V > /v" in missed.stderr
    dry = busybox.build(context, "--dry-run")
    assert "RUN     [4/4] RUN echo v=$V > /v  (no earlier record)" in dry.stdout
    assert dry.stdout.endswith("0 cached, 3 would run\n")
    assert "DONE" not in dry.stderr.replace("#1 DONE", "")  # nothing ran
    busybox.build(context)
    assert busybox.build(context, "--fail-on-cache-miss").returncode == 0
    dry = busybox.build(context, "--dry-run", "--build-arg", "V=3")
    assert "RUN     [4/4] RUN echo v=$V > /v  (build arg V changed (1 -> 3))" in (
        dry.stdout
    )
    assert dry.stdout.endswith("2 cached, 1 would run\n")
    strict = busybox.build(
        context, "--dry-run", "--fail-on-cache-miss", "--build-arg", "V=3", check=False
    )
    assert strict.returncode == 5


def test_metadata_file_and_graph(busybox: Buildpy, tmp_path: Path) -> None:
    context = ctx(tmp_path)
    meta, dot, graph = tmp_path / "md.json", tmp_path / "g.dot", tmp_path / "g.json"
    busybox.build(context, "-t", "app:1", "--metadata-file", meta, "--graph", dot)
    busybox.build(context, "-t", "app:1", "--metadata-file", meta, "--graph", graph)
    data = json.loads(meta.read_text())
    inspect = json.loads(busybox.run("inspect", "app:1").stdout)[0]
    assert data["containerimage.digest"] == inspect["Digest"]
    assert data["containerimage.config.digest"] == inspect["Id"]
    assert data["containerimage.descriptor"]["digest"] == inspect["Digest"]
    assert data["image.name"] == "docker.io/library/app:1"
    steps = {s["name"]: s for s in data["buildpy.steps"]}
    run = steps["[4/4] RUN echo v=$V > /v"]
    assert run["cached"] and run["cache_key"].startswith("sha256:")
    assert data["buildpy.cache"]["hits"] == 3
    assert "digraph build {" in dot.read_text() and "->" in dot.read_text()
    vertices = json.loads(graph.read_text())["vertices"]
    assert {v["status"] for v in vertices} >= {"cached"}
    bad = busybox.build(context, "--graph", tmp_path / "g.png", check=False)
    assert bad.returncode == 2 and "expected .dot, .gv or .json" in bad.stderr


def test_iidfile_holds_the_image_id_and_a_failed_build_removes_it(
    busybox: Buildpy, tmp_path: Path
) -> None:
    iid = tmp_path / "out" / "iid"
    iid.parent.mkdir()
    busybox.build(ctx(tmp_path), "-t", "app:1", "--iidfile", iid)
    inspect = json.loads(busybox.run("inspect", "app:1").stdout)[0]
    assert iid.read_text() == inspect["Id"]  # no newline, as docker writes it
    failing = write_context(
        tmp_path / "fail", {"Dockerfile": "FROM busybox\nRUN exit 3\n"}
    )
    failed = busybox.build(failing, "--iidfile", iid, check=False)
    assert failed.returncode == 1
    assert not iid.exists()  # not the ID of the build before
    iid.mkdir()  # a directory where the file goes
    bad = busybox.build(ctx(tmp_path), "--iidfile", iid, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(f"ERROR: --iidfile {iid}: ")


def test_first_build_metadata_has_timings_and_critical_path(
    busybox: Buildpy, tmp_path: Path
) -> None:
    context = ctx(tmp_path)
    meta = tmp_path / "md.json"
    busybox.build(context, "--metadata-file", meta)
    data = json.loads(meta.read_text())
    run = next(s for s in data["buildpy.steps"] if s["name"].startswith("[4/4]"))
    assert run["reason"] == "no earlier record" and not run["cached"]
    assert run["end"] >= run["start"] and run["wall_time"] > 0
    assert run["bytes_written"] > 0
    assert data["buildpy.critical_path"]["steps"][-1] == run["name"]


def test_no_cache_filter(busybox: Buildpy, tmp_path: Path) -> None:
    dockerfile = "FROM busybox AS deps\nRUN echo deps\nFROM deps\nRUN echo app\n"
    context = ctx(tmp_path, dockerfile)
    busybox.build(context)
    again = busybox.build(context, "--no-cache-filter", "deps").stderr
    assert miss_lines(again) == [
        "cache disabled for its stage (--no-cache-filter)",  # FROM busybox AS deps
        "cache disabled for its stage (--no-cache-filter)",  # RUN echo deps
        "an input step runs again (--no-cache-filter)",
    ]


def du_sb(path: Path) -> int:
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def du_total(buildpy: Buildpy) -> int:
    out = buildpy.run("du").stdout
    return int(re.search(r"^Total:\s+\S+ \((\d+) bytes\)$", out, re.M).group(1))


def test_du_agrees_with_du_sb_and_prune_keeps_tagged_images(
    busybox: Buildpy, tmp_path: Path
) -> None:
    context = ctx(tmp_path)
    busybox.build(context, "-t", "app:1")
    total = du_total(busybox)
    assert abs(total - du_sb(busybox.root)) <= total / 100
    out = busybox.run("du").stdout
    assert "[4/4] RUN echo v=$V > /v" in out
    busybox.run("prune", "--all")
    assert "Cache records:\t0" in busybox.run("du").stdout
    assert du_sb(busybox.root) < total
    # The tagged images still work: export one, build on the other again.
    busybox.run("inspect", "app:1")
    rebuilt = busybox.build(
        context, "-t", "app:1", "-o", f"type=tar,dest={tmp_path}/x.tar"
    )
    assert len(miss_lines(rebuilt.stderr)) == 3


def test_prune_filter_until_keeps_recent_records(
    busybox: Buildpy, tmp_path: Path
) -> None:
    busybox.build(ctx(tmp_path))
    busybox.run("prune", "--filter", "until=1h")
    assert "Cache records:\t3" in busybox.run("du").stdout
    bad = busybox.run("prune", "--filter", "since=1h", check=False)
    assert bad.returncode == 2


def test_max_storage_evicts_after_the_build(busybox: Buildpy, tmp_path: Path) -> None:
    context = ctx(tmp_path)
    busybox.build(context, "-t", "app:1", "--max-storage", "1")
    assert "Cache records:\t0" in busybox.run("du").stdout
    busybox.run("inspect", "app:1")
    big = busybox.build(context, "--max-storage", "10GB")
    assert len(miss_lines(big.stderr)) == 3
    assert "Cache records:\t3" in busybox.run("du").stdout


def test_max_storage_from_the_store_settings(busybox: Buildpy, tmp_path: Path) -> None:
    context = ctx(tmp_path)
    settings = busybox.root / "config.json"
    settings.write_text(json.dumps({"max-storage": "1"}))
    busybox.build(context, "-t", "app:1")
    assert "Cache records:\t0" in busybox.run("du").stdout
    busybox.run("inspect", "app:1")
    # The flag wins over the setting.
    busybox.build(context, "--max-storage", "10GB")
    assert "Cache records:\t3" in busybox.run("du").stdout
    settings.write_text(json.dumps({"max-storage": "lots"}))
    bad = busybox.build(context, check=False)
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(f"ERROR: {settings}: max-storage: invalid size 'lots'")
    )
    assert "Cache records:\t3" in busybox.run("du").stdout


def test_content_changed_behind_kept_size_and_mtime_is_never_stale(
    busybox: Buildpy, tmp_path: Path
) -> None:
    """`touch -d` puts an mtime back; a cache that trusts size and mtime (as
    BuildKit's does) then serves the old file. ctime gives it away."""
    context = write_context(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /seen\n"},
    )
    a = context / "a.txt"
    a.write_text("old!\n")
    subprocess.run(["touch", "-d", "2020-01-02 03:04:05", str(a)], check=True)
    before = a.stat()
    busybox.build(context, "-o", f"type=local,dest={tmp_path / 'one'}")
    assert (tmp_path / "one" / "seen").read_text() == "old!\n"
    again = busybox.build(context).stderr
    assert miss_lines(again) == []  # the remembered checksum was trusted
    with open(a, "r+") as f:  # in place: same inode, same size
        f.write("new!\n")
    subprocess.run(["touch", "-d", "2020-01-02 03:04:05", str(a)], check=True)
    after = a.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    rebuilt = busybox.build(context, "-o", f"type=local,dest={tmp_path / 'two'}")
    assert (tmp_path / "two" / "seen").read_text() == "new!\n"
    old = xxhash.xxh3_128(b"old!\n").hexdigest()[:8]
    new = xxhash.xxh3_128(b"new!\n").hexdigest()[:8]
    assert (
        miss_lines(rebuilt.stderr)[0] == f"file a.txt changed (xxh3 {old}.. -> {new}..)"
    )


class _Gate(BaseHTTPRequestHandler):
    """Answers once the test lets it: holds a RUN step's wget open."""

    release = threading.Event()
    arrived = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).arrived.set()
        type(self).release.wait(timeout=120)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gate() -> Iterator[tuple[int, type[_Gate]]]:
    handler = type(
        "Gate", (_Gate,), {"release": threading.Event(), "arrived": threading.Event()}
    )
    with http_server(handler) as port:
        try:
            yield port, handler
        finally:
            handler.release.set()  # before the server stops: no handler waits


def test_two_build_processes_share_a_step(
    busybox: Buildpy, tmp_path: Path, gate: tuple[int, type[_Gate]]
) -> None:
    port, handler = gate
    context = ctx(
        tmp_path, f"FROM busybox\nRUN wget -q -O /got http://127.0.0.1:{port}/\n"
    )
    env = {**__import__("os").environ, "BUILDPY_ROOT": str(busybox.root)}
    env.pop("BUILDKIT_PROGRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "buildpy",
        "build",
        "--progress",
        "plain",
        str(context),
    ]
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert handler.arrived.wait(timeout=120)
        second = subprocess.Popen(
            cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        assert second.stderr is not None
        seen = []
        for line in second.stderr:
            seen.append(line)
            if "waiting for another build running this step" in line:
                break
        handler.release.set()
        rest = second.stderr.read()
        assert second.wait(timeout=120) == 0, "".join(seen) + rest
        assert first.wait(timeout=120) == 0
        out = "".join(seen) + rest
        assert re.search(
            r"^#(\d+) \[2/2\] RUN wget.*\n#\1 waiting.*\n#\1 CACHED", out, re.M
        ), out
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_rawjson_from_buildkit_progress_carries_the_reason(
    busybox: Buildpy, tmp_path: Path
) -> None:
    context = ctx(tmp_path)
    out = busybox.run("build", context, env={"BUILDKIT_PROGRESS": "rawjson"}).stderr
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    started = [e for e in events if e.get("status") == "START" and "reason" in e]
    assert [e["reason"] for e in started] == ["no earlier record"] * 3


def test_tty_ends_with_the_summary_line() -> None:
    import io

    from buildpy.progress import TtyDisplay

    out = io.StringIO()
    display = TtyDisplay(out)
    with display.internal("[internal] load build definition from Dockerfile"):
        pass
    display.close()
    last = out.getvalue().rsplit("[+] Building", 1)[1]
    assert re.match(r" \d+\.\ds \(1/1\) FINISHED\n => \[internal\] load", last)
