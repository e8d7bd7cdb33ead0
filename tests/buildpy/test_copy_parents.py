"""COPY --parents end to end: a real build with busybox, exported with
``-o type=local``, checked as a user would look at the result."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Buildpy, write_context

DOCKERFILE = """\
FROM busybox AS build
RUN mkdir -p /app/dist && echo built > /app/dist/x.js
FROM busybox
COPY --parents ./pkgs/*/package.json /app/
COPY --parents src/./lib/util.py /app/
COPY --from=build --parents /app/./dist/x.js /srv/
RUN cat /app/pkgs/b/package.json /app/lib/util.py /srv/dist/x.js > /seen
"""


def test_copy_parents_keeps_directories(busybox: Buildpy, tmp_path: Path) -> None:
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": DOCKERFILE,
            "pkgs/a/package.json": "a\n",
            "pkgs/b/package.json": "b\n",
            "pkgs/c/README": "not copied\n",
            "src/lib/util.py": "util\n",
        },
    )
    out = tmp_path / "out"
    busybox.build(context, "-o", f"type=local,dest={out}")
    assert (out / "app/pkgs/a/package.json").read_text() == "a\n"
    assert sorted(p.name for p in (out / "app/pkgs").iterdir()) == ["a", "b"]
    # The pivot: only what follows /./ is kept.
    assert (out / "app/lib/util.py").read_text() == "util\n"
    assert not (out / "app/src").exists()
    assert (out / "srv/dist/x.js").read_text() == "built\n"
    assert not (out / "srv/app").exists()
    # The RUN step saw the same layout inside the container.
    assert (out / "seen").read_text() == "b\nutil\nbuilt\n"

    # Moving a file to another directory changes what --parents writes, so
    # the step runs again instead of coming from the cache.
    (context / "pkgs/a/package.json").rename(context / "pkgs/c/package.json")
    again = tmp_path / "again"
    busybox.build(context, "-o", f"type=local,dest={again}")
    assert sorted(p.name for p in (again / "app/pkgs").iterdir()) == ["b", "c"]
