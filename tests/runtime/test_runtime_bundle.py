"""Bundles (config.json, users, stubs) and choosing an executor; no container runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from runtime import (
    ExecutorUnavailable,
    Mount,
    ProcessSpec,
    UserNotFound,
    find_executor,
    make_bundle,
)
from runtime.executor import cgroup_hybrid_reason
from runtime.spec import STUBS_FILE, secure_join

SCHEMA_DIR = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")


def _validator() -> jsonschema.Draft4Validator:
    schema_file = SCHEMA_DIR / "config-schema.json"
    if not schema_file.exists():
        pytest.skip(
            f"{schema_file} is missing (golang-github-opencontainers-specs-dev)"
        )
    # The schema's $refs are relative file names ("defs.json#/..."): register
    # every file of the directory under its file:// address.
    registry: Registry = Registry().with_resources(
        (
            f"file://{path}",
            Resource.from_contents(
                json.loads(path.read_text()), default_specification=DRAFT4
            ),
        )
        for path in SCHEMA_DIR.glob("*.json")
    )
    schema = json.loads(schema_file.read_text())
    schema["id"] = f"file://{schema_file}"
    return jsonschema.Draft4Validator(schema, registry=registry)


@pytest.fixture
def simple_rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "app:x:1000:1000::/home/app:/bin/sh\n"
        "nobody:x:65534:65534::/:/bin/false\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:root,app\n"
    )
    return root


def _bundle(tmp_path: Path, rootfs: Path, **kwargs: object) -> dict:
    spec = ProcessSpec(args=["true"], env=[], **kwargs)  # type: ignore[arg-type]
    return make_bundle(tmp_path / "bundle", rootfs, spec)


@pytest.mark.parametrize("network", ["host", "none"])
def test_config_validates_against_the_runtime_spec_schema(
    tmp_path: Path, simple_rootfs: Path, network: str
) -> None:
    validator = _validator()
    mounts = [Mount("/cache", "bind", str(tmp_path), ("rbind", "rw"))]
    _bundle(tmp_path, simple_rootfs, user="app", network=network, mounts=mounts)
    written = json.loads((tmp_path / "bundle" / "config.json").read_text())
    errors = [e.message for e in validator.iter_errors(written)]
    assert errors == []
    written["process"]["user"]["uid"] = "app"  # the validator does catch errors
    assert list(validator.iter_errors(written))


def test_config_has_no_rlimits_and_no_resource_limits(
    tmp_path: Path, simple_rootfs: Path
) -> None:
    config = _bundle(tmp_path, simple_rootfs)
    assert "rlimits" not in config["process"]
    assert set(config["linux"]["resources"]) == {"devices"}
    namespaces = [ns["type"] for ns in config["linux"]["namespaces"]]
    assert sorted(namespaces) == ["ipc", "mount", "pid", "uts"]


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (0, 0, [])),
        ("root", (0, 0, [3000])),
        ("app", (1000, 1000, [2000, 3000])),
        ("1000", (1000, 1000, [2000, 3000])),
        ("1000:2000", (1000, 2000, [])),
        ("app:extra", (1000, 2000, [])),
        ("app:4000", (1000, 4000, [])),
        ("4242", (4242, 0, [])),
        ("nobody", (65534, 65534, [])),
    ],
)
def test_users_resolve_as_docker_resolves_them(
    tmp_path: Path, simple_rootfs: Path, user: str, expected: tuple
) -> None:
    config_user = _bundle(tmp_path, simple_rootfs, user=user)["process"]["user"]
    got = (config_user["uid"], config_user["gid"], config_user["additionalGids"])
    assert got == expected


def test_unknown_user_and_group(tmp_path: Path, simple_rootfs: Path) -> None:
    with pytest.raises(UserNotFound) as info:
        _bundle(tmp_path, simple_rootfs, user="ghost")
    assert str(info.value) == (
        "unable to find user ghost: no matching entries in passwd file"
    )
    with pytest.raises(UserNotFound, match="unable to find group ghosts: no match"):
        _bundle(tmp_path, simple_rootfs, user="app:ghosts")


def test_a_passwd_symlink_cannot_reach_the_host(
    tmp_path: Path, simple_rootfs: Path
) -> None:
    host_file = tmp_path / "host-passwd"
    host_file.write_text("ghost:x:7:7::/:/bin/sh\n")
    (simple_rootfs / "etc" / "passwd").unlink()
    (simple_rootfs / "etc" / "passwd").symlink_to(host_file)
    with pytest.raises(UserNotFound):
        _bundle(tmp_path, simple_rootfs, user="ghost")


def test_secure_join_stays_in_the_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "up").symlink_to("../../../..")
    (tmp_path / "abs").symlink_to("/etc")
    assert secure_join(tmp_path, "/a/up/etc") == tmp_path / "etc"
    assert secure_join(tmp_path, "/abs/hosts") == tmp_path / "etc" / "hosts"
    assert secure_join(tmp_path, "../../x") == tmp_path / "x"


def test_stubs_are_the_missing_mount_points(
    tmp_path: Path, simple_rootfs: Path
) -> None:
    _bundle(tmp_path, simple_rootfs, cwd="/w")
    record = json.loads((tmp_path / "bundle" / STUBS_FILE).read_text())
    assert "proc" in record["paths"] and "etc/hosts" in record["paths"]
    assert "etc" not in record["paths"] and "w" not in record["paths"]
    assert (simple_rootfs / "w").is_dir()


def test_unknown_executor_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(ExecutorUnavailable) as info:
        find_executor("docker", tmp_path)
    assert "\n" not in str(info.value) and "'docker'" in str(info.value)
    with pytest.raises(ExecutorUnavailable, match="not an executable file"):
        find_executor(str(tmp_path / "no-runtime"), tmp_path)


def test_auto_prefers_runc_and_crun_is_diagnosed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    expected = "runc" if shutil.which("runc") else "builtin"
    assert find_executor(None, tmp_path).name == expected
    assert find_executor("auto", tmp_path).name == expected
    reason = cgroup_hybrid_reason()
    if reason is None or shutil.which("crun") is None:
        pytest.skip("crun is missing or can run on this machine")
    with pytest.raises(ExecutorUnavailable) as info:
        find_executor("crun", tmp_path)
    message = str(info.value)
    assert message.startswith("crun cannot run containers here: cgroups in hybrid mode")
    assert "\n" not in message
