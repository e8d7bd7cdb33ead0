"""buildpy beside docker's BuildKit and buildah: the same cases in one run.

    python3 benchmarks/compare.py [--rounds N] [--cases a,b] [--write FILE.md]

Run as root on a quiet machine. Every engine builds the same Dockerfiles on the same
busybox root filesystem (scripts/make-busybox-rootfs.sh), imported into each one's
storage: a buildpy store of its own (driven embedded, and through ``buildpy serve``),
dockerd's BuildKit (Debian's docker.io 20.10 CLI with DOCKER_BUILDKIT=1, when a docker
daemon answers on /var/run/docker.sock; see ../shared/tools/peers-setup.sh), and buildah
with storage of its own (tests/buildpy/peers.py). An engine that is not installed is
left out of the table, and the table says so.

The cases are those of issues 4, 5 and 8:

- ``noop50``: a fully cached rebuild of a 50-step Dockerfile.
- ``onefile20k``: the rebuild after one file of a 20,000-file context changed
  (``COPY . /ctx`` then a RUN that reads it).
- ``parallel4``: four stages that each ``RUN sleep 2``, then a stage that copies from
  all four, built without cache; beside it ``sleep1``, the same with one stage. The
  figure to read is the ratio parallel4 / sleep1: 1.0 means the four stages cost no
  more than the longest one.
- ``steps20``: 20 ``RUN true`` steps built without cache, beside ``steps0`` (the same
  Dockerfile with no RUN); per-step cost = (steps20 - steps0) / 20.

Each figure is the median wall time of ``--rounds`` whole client processes (start-up
included, as a user or a CI step sees it) after one unmeasured warm-up build; the
engines take turns round by round, so that the machine's load falls on all alike.
buildpy's modules are compiled to bytecode first, as ``pip install`` does
(benchmarks/bytecode.py). With
``--write``, the table replaces what lies between the markers ``<!-- compare:begin -->``
and ``<!-- compare:end -->`` in the given file. Nothing is asserted: these are figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bytecode import compile_packages  # noqa: E402
from tests.buildpy.peers import BUILDAH, Buildah, buildah_storage  # noqa: E402

DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI: BuildKit built in (MACHINE-NOTES)
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
CASES = ("noop50", "onefile20k", "parallel4", "sleep1", "steps20", "steps0")


# --- the Dockerfiles -----------------------------------------------------------


def _write(directory: Path, dockerfile: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    return directory


def noop50(directory: Path) -> Path:
    lines = ["FROM busybox"] + [f"RUN echo step {i} > /step-{i}" for i in range(50)]
    return _write(directory, "\n".join(lines) + "\n")


def onefile20k(directory: Path) -> Path:
    for d in range(100):
        sub = directory / "src" / f"d{d:03}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(200):
            (sub / f"f{f:03}.txt").write_text(f"file {d} {f}\n")
    return _write(
        directory, "FROM busybox\nCOPY . /ctx\nRUN wc -c /ctx/src/d000/f000.txt\n"
    )


def parallel(directory: Path, stages: int) -> Path:
    lines: list[str] = []
    for i in range(stages):
        lines += [f"FROM busybox AS s{i}", f"RUN sleep 2 && echo {i} > /n{i}"]
    lines.append("FROM busybox")
    lines += [f"COPY --from=s{i} /n{i} /n{i}" for i in range(stages)]
    return _write(directory, "\n".join(lines) + "\n")


def steps(directory: Path, count: int) -> Path:
    lines = ["FROM busybox"] + [f"RUN true {i}" for i in range(count)]
    lines.append("LABEL done=1")
    return _write(directory, "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]
    no_cache: bool  # every measured build runs every step
    before_each: Callable[[Path, int], None] | None = None  # change the context


def _touch_one(context: Path, round_no: int) -> None:
    # Content no engine has seen: the engines share the context, and buildpy's
    # two ways share one store, so a repeated content would be a cache hit.
    stamp = time.time_ns()
    (context / "src" / "d050" / "f100.txt").write_text(f"changed {stamp}\n")


ALL_CASES = {
    "noop50": Case("noop50", noop50, no_cache=False),
    "onefile20k": Case("onefile20k", onefile20k, False, _touch_one),
    "parallel4": Case("parallel4", lambda d: parallel(d, 4), no_cache=True),
    "sleep1": Case("sleep1", lambda d: parallel(d, 1), no_cache=True),
    "steps20": Case("steps20", lambda d: steps(d, 20), no_cache=True),
    "steps0": Case("steps0", lambda d: steps(d, 0), no_cache=True),
}


# --- the engines ---------------------------------------------------------------


class Engine:
    name = ""

    def command(self, context: Path, no_cache: bool) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def build(self, context: Path, no_cache: bool) -> float:
        started = time.perf_counter()
        proc = subprocess.run(
            self.command(context, no_cache),
            env=self.env(),
            cwd=context,
            capture_output=True,
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(
                f"{self.name}: build of {context} exited {proc.returncode}: "
                + proc.stderr.decode(errors="replace")[-2000:]
            )
        return elapsed


class BuildpyEmbedded(Engine):
    name = "buildpy"

    def __init__(self, root: Path) -> None:
        self.root = root

    def env(self) -> dict[str, str]:
        env = dict(os.environ, BUILDPY_ROOT=str(self.root))
        env.pop("BUILDPY_HOST", None)
        return env

    def command(self, context: Path, no_cache: bool) -> list[str]:
        flags = ["--no-cache"] if no_cache else []
        return [
            sys.executable,
            "-m",
            "buildpy",
            "build",
            "-q",
            *flags,
            "-t",
            "cmp",
            ".",
        ]


class BuildpyDaemon(BuildpyEmbedded):
    name = "buildpy serve"

    def __init__(self, root: Path, addr: str) -> None:
        super().__init__(root)
        self.addr = addr

    def env(self) -> dict[str, str]:
        return dict(super().env(), BUILDPY_HOST=self.addr)


class BuildKit(Engine):
    name = "BuildKit (docker 20.10)"

    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_BUILDKIT="1")

    def command(self, context: Path, no_cache: bool) -> list[str]:
        # dockerd runs here without a bridge (MACHINE-NOTES): RUN needs the host's.
        flags = ["--no-cache"] if no_cache else []
        return [DOCKER, "build", "-q", "--network=host", *flags, "-t", "cmp", "."]


class BuildahEngine(Engine):
    name = "buildah"

    def __init__(self, buildah: Buildah) -> None:
        self.buildah = buildah

    def command(self, context: Path, no_cache: bool) -> list[str]:
        flags = ["--no-cache"] if no_cache else []
        nofile = os.sysconf("SC_OPEN_MAX")
        return self.buildah.command(
            "bud", "--layers", "-q", "--runtime", "runc", "--isolation", "oci",
            "--network", "host", "--ulimit", f"nofile={nofile}:{nofile}",
            "--pull=never", *flags, "-t", "cmp", ".",
        )  # fmt: skip


def _docker_ready() -> str | None:
    """None when dockerd's BuildKit can be compared, else why not."""
    if not Path(DOCKER).exists():
        return f"{DOCKER} is not installed"
    if not Path("/var/run/docker.sock").exists():
        return "no docker daemon (run ../shared/tools/peers-setup.sh)"
    proc = subprocess.run([DOCKER, "image", "inspect", "busybox"], capture_output=True)
    if proc.returncode != 0:
        return "dockerd has no busybox image (run ../shared/tools/peers-setup.sh)"
    return None


@contextmanager
def buildpy_store(work: Path, rootfs: Path) -> Iterator[Path]:
    root = work / "buildpy-root"
    env = dict(os.environ, BUILDPY_ROOT=str(root))
    env.pop("BUILDPY_HOST", None)
    subprocess.run(
        [sys.executable, "-m", "buildpy", "import", "--change", 'CMD ["sh"]',
         str(rootfs), "busybox:latest"],
        env=env, check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    try:
        yield root
    finally:
        subprocess.run(
            [sys.executable, "-m", "buildpy", "prune", "--all"],
            env=env, capture_output=True, cwd=REPO,
        )  # fmt: skip
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _unmount_under(path: Path) -> None:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@contextmanager
def daemon(root: Path, work: Path) -> Iterator[str]:
    addr = f"unix://{work}/buildpy.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildpy", "serve", "--addr", addr, "--root", str(root)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    try:
        if "listening on" not in first:
            raise RuntimeError(f"buildpy serve did not start: {first}")
        yield addr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the run -------------------------------------------------------------------


def measure(
    engines: list[Engine], case: Case, context: Path, rounds: int
) -> dict[str, float]:
    """The median time of each engine, the engines taking turns round by round
    (each round in another order), so that a change of the machine's load falls
    on all of them alike."""
    for engine in engines:
        engine.build(context, no_cache=False)  # warm-up: bases pulled, cache filled
    times: dict[str, list[float]] = {engine.name: [] for engine in engines}
    for n in range(rounds):
        shift = n % len(engines)
        for engine in engines[shift:] + engines[:shift]:
            if case.before_each is not None:
                case.before_each(context, n)
            times[engine.name].append(engine.build(context, case.no_cache))
    return {name: statistics.median(figures) for name, figures in times.items()}


def table(results: dict[str, dict[str, float]], skipped: dict[str, str]) -> str:
    engines = list(results)
    reference = "BuildKit (docker 20.10)"
    lines = [
        "| case | "
        + " | ".join(engines)
        + " | buildpy / BuildKit | buildpy serve / BuildKit |",
        "|---" * (len(engines) + 3) + "|",
    ]
    cases = [c for c in CASES if any(c in r for r in results.values())]
    for case in cases:
        row = [case] + [
            f"{results[e][case]:.2f} s" if case in results[e] else "-" for e in engines
        ]
        for mine in ("buildpy", "buildpy serve"):
            ref = results.get(reference, {}).get(case)
            own = results.get(mine, {}).get(case)
            row.append(f"{own / ref:.2f}" if ref and own else "-")
        lines.append("| " + " | ".join(row) + " |")
    derived = []
    for engine, figures in results.items():
        if "parallel4" in figures and "sleep1" in figures:
            ratio = figures["parallel4"] / figures["sleep1"]
            derived.append(f"- {engine}: parallel4 / sleep1 = {ratio:.2f}")
        if "steps20" in figures and "steps0" in figures:
            per = (figures["steps20"] - figures["steps0"]) / 20
            derived.append(f"- {engine}: cost of one RUN step = {per * 1000:.0f} ms")
    out = "\n".join(lines)
    if derived:
        out += "\n\n" + "\n".join(derived)
    if skipped:
        out += "\n\n" + "\n".join(
            f"- not measured: {e}: {why}" for e, why in skipped.items()
        )
    return out


def write_section(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to write between")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--engines", default="buildpy,buildpy serve,BuildKit,buildah")
    parser.add_argument("--write", type=Path, help="the markdown file to update")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("compare.py: run as root (every engine here needs it)")
    compile_packages(REPO)
    wanted = args.engines.split(",")
    cases = [ALL_CASES[c] for c in args.cases.split(",")]
    results: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cmp-")))
        rootfs = work / "rootfs"
        subprocess.run(
            [REPO / "scripts" / "make-busybox-rootfs.sh", rootfs],
            check=True, capture_output=True,
        )  # fmt: skip
        engines: list[Engine] = []
        root = stack.enter_context(buildpy_store(work, rootfs))
        if "buildpy" in wanted:
            engines.append(BuildpyEmbedded(root))
        if "buildpy serve" in wanted:
            engines.append(BuildpyDaemon(root, stack.enter_context(daemon(root, work))))
        if "BuildKit" in wanted:
            if (why := _docker_ready()) is None:
                engines.append(BuildKit())
            else:
                skipped[BuildKit.name] = why
        if "buildah" in wanted:
            if BUILDAH is None:
                skipped["buildah"] = "not installed"
            else:
                (work / "buildah").mkdir()
                buildah = stack.enter_context(buildah_storage(work / "buildah"))
                buildah.import_rootfs(rootfs, "busybox:latest", "sh")
                engines.append(BuildahEngine(buildah))
        for case in cases:
            # One context per case, shared by the engines: the same files for all.
            context = case.make(work / "ctx" / case.name)
            for name, figure in measure(engines, case, context, args.rounds).items():
                results.setdefault(name, {})[case.name] = figure
                print(f"{case.name:12} {name:24} {figure:.3f} s", flush=True)
    text = table(results, skipped)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
