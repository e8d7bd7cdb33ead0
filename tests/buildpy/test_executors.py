"""The same RUN steps under each executor give the same image."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import Buildpy, write_context

DOCKERFILE = """\
FROM busybox
ENV FROM_ENV=yes
WORKDIR /made/by/workdir
RUN echo "$FROM_ENV $(pwd) $(hostname)" > /env-cwd-host
RUN id > /as-root
USER app
RUN id > /tmp/as-app && echo $$ > /tmp/pid
USER root
RUN cp /tmp/as-app /tmp/pid / && rm /tmp/as-app /tmp/pid
"""


def crun_reason() -> str | None:
    """crun refuses cgroup v1+v2 hybrid machines; say so instead of failing."""
    if not shutil.which("crun"):
        return "crun is not installed"
    from runtime import ExecutorUnavailable, find_executor

    try:
        find_executor("crun", __import__("pathlib").Path("/tmp"))
    except ExecutorUnavailable as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("executor", ["runc", "builtin", "crun"])
def test_run_steps_agree_across_executors(busybox: Buildpy, tmp_path, executor):
    if executor == "crun" and (reason := crun_reason()):
        pytest.skip(reason)
    if executor == "runc" and not shutil.which("runc"):
        pytest.skip("runc is installed by .ci/run")
    context = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE})
    out = tmp_path / "out"
    busybox.build(context, "--oci-runtime", executor, "-o", f"type=local,dest={out}")
    assert (
        out / "env-cwd-host"
    ).read_text() == "yes /made/by/workdir buildkitsandbox\n"
    assert (out / "as-root").read_text().startswith("uid=0(root) gid=0(root)")
    as_app = (out / "as-app").read_text()
    assert as_app.startswith("uid=1000(app) gid=1000(app)")
    assert "2000(extra)" in as_app
    # The shell is not pid 1 (the executor's init or the shell's parent is), but it
    # lives in its own pid namespace: a small number, not the host's.
    assert int((out / "pid").read_text()) < 100
    assert (out / "made/by/workdir").is_dir()
