"""The registry client and the commands that use it, against Debian's
docker-registry on 127.0.0.1 (one plain, one with htpasswd basic auth)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.registry import (
    MEDIA_OCI_INDEX,
    BlobDigestMismatch,
    NotFoundInRegistry,
    RegistryAuthError,
    RegistryClient,
)
from tests.buildpy.registry_server import Registry, running_registry
from tests.conftest import Buildpy, write_context

USER, PASSWORD = "ci-user", "s3cret-Pa55word"


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[Registry]:
    with running_registry((USER, PASSWORD)) as reg:
        yield reg


@pytest.fixture
def second(tmp_path: Path) -> Iterator[Buildpy]:
    """A second, clean store (another machine)."""
    from tests.conftest import mounts_under, unmount_all

    root = tmp_path / "second-state"
    try:
        yield Buildpy(root)
        assert not mounts_under(root)
    finally:
        unmount_all(root)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def skopeo_inspect(ref: str, *, raw: bool = False) -> dict:
    args = ["skopeo", "inspect", "--tls-verify=false"]
    if raw:
        args.append("--raw")
    out = subprocess.run(
        [*args, f"docker://{ref}"], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def local_image(bp: Buildpy, name: str) -> dict:
    return json.loads(bp.run("inspect", name).stdout)[0]


def test_push_is_what_was_built_and_pulls_into_a_clean_store(
    busybox: Buildpy, second: Buildpy, registry: Registry, tmp_path: Path
):
    ref = f"{registry.host}/app:1"
    context = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM busybox\nRUN echo built > /built\n"
            'CMD ["cat", "/built"]\n'
        },
    )
    busybox.build(context, "-t", ref, "--push")
    built = local_image(busybox, ref)

    pushed = skopeo_inspect(ref, raw=True)
    config = skopeo_inspect(ref)
    # The image ID (config digest) and every layer's content are what was built.
    assert pushed["config"]["digest"] == built["Id"]
    assert config["Architecture"] == built["Config"]["architecture"]
    assert len(pushed["layers"]) == len(built["Manifest"]["layers"]) == 2
    assert all(
        layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        for layer in pushed["layers"]
    )

    # A clean store pulls it and builds FROM it by name, tag and registry.
    pulled = second.run("pull", ref)
    assert pulled.stdout.strip() == ref
    assert local_image(second, ref)["Id"] == built["Id"]
    ctx2 = write_context(
        tmp_path / "ctx2", {"Dockerfile": f"FROM {ref}\nRUN cat /built > /seen\n"}
    )
    out = tmp_path / "rootfs"
    second.build(ctx2, "-o", f"type=local,dest={out}")
    assert (out / "seen").read_text() == "built\n"


def test_annotations_reach_the_manifest_everywhere_it_goes(
    busybox: Buildpy, registry: Registry, tmp_path: Path
):
    ref = f"{registry.host}/annotated:1"
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo x > /x\n"}
    )
    given = {"org.opencontainers.image.source": "https://example.com/r", "team": "x"}
    flags = ["--annotation", "org.opencontainers.image.source=https://example.com/r"]
    flags += ["--annotation", "manifest:team=x"]
    archive = tmp_path / "oci.tar"
    busybox.build(
        context, *flags, "-t", ref, "--push", "-o", f"type=oci,dest={archive}"
    )
    assert skopeo_inspect(ref, raw=True)["annotations"] == given
    assert local_image(busybox, ref)["Manifest"]["annotations"] == given
    for source in (archive, tmp_path / "saved.tar"):
        if source.name == "saved.tar":
            busybox.run("save", "-o", source, ref)
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci-archive:{source}"],
            check=True,
            capture_output=True,
            text=True,
        )
        assert json.loads(raw.stdout)["annotations"] == given
    # Outside every step's key, as labels: the image ID is the one without them.
    plain = busybox.build(context, "-q").stdout
    assert plain.strip() == local_image(busybox, ref)["Id"]
    for bad, says in [
        ("index:a=b", "only manifest annotations are supported"),
        ("a", "expected [manifest:]KEY=VALUE"),
    ]:
        proc = busybox.build(context, "--annotation", bad, check=False)
        assert proc.returncode == 2 and says in proc.stderr


def test_output_shorthands_registry_and_docker_without_dest(
    busybox: Buildpy, registry: Registry, tmp_path: Path
):
    ref = f"{registry.host}/shorthand:1"
    context = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo s > /s\n"}
    )
    # As buildx: type=registry pushes; type=docker without dest loads (here,
    # into the local store, where buildx loads into docker's).
    busybox.build(context, "-o", f"type=registry,name={ref}")
    assert skopeo_inspect(ref, raw=True)["layers"]
    busybox.build(context, "-t", "loaded:1", "-o", "type=docker")
    pushed = skopeo_inspect(ref, raw=True)["config"]["digest"]
    assert local_image(busybox, "loaded:1")["Id"] == pushed  # the same image


def test_from_pulls_by_digest_when_the_store_lacks_it(
    busybox: Buildpy, second: Buildpy, registry: Registry, tmp_path: Path
):
    ref = f"{registry.host}/bydigest:1"
    busybox.run("tag", "busybox", ref)
    line = busybox.run("push", ref).stdout.strip()
    digest = line.split("digest: ")[1].split()[0]
    assert digest == skopeo_inspect(ref)["Digest"]

    ctx = write_context(
        tmp_path / "ctx",
        {"Dockerfile": f"FROM {registry.host}/bydigest@{digest}\nRUN echo ok > /ok\n"},
    )
    out = tmp_path / "rootfs"
    second.build(ctx, "-o", f"type=local,dest={out}")
    assert (out / "ok").read_text() == "ok\n"
    assert (out / "bin/busybox").exists()


def test_a_second_push_uploads_nothing_and_other_repos_mount(
    busybox: Buildpy, registry: Registry
):
    first = f"{registry.host}/mount/a:1"
    busybox.run("tag", "busybox", first)
    assert "pushed" in busybox.run("push", first).stderr
    again = busybox.run("push", first).stderr
    assert "pushed" not in again and "already exists" in again
    other = f"{registry.host}/mount/b:1"
    busybox.run("tag", "busybox", other)
    mounted = busybox.run("push", other).stderr
    assert "mounted from mount/a" in mounted and "pushed" not in mounted


def test_missing_images_are_not_found_and_say_where(
    busybox: Buildpy, registry: Registry, tmp_path: Path
):
    out = busybox.run("pull", f"{registry.host}/nothing:here", check=False)
    assert out.returncode == 2
    assert "not found on " + registry.host in out.stderr
    ctx = write_context(
        tmp_path / "ctx", {"Dockerfile": f"FROM {registry.host}/nothing:here\n"}
    )
    failed = busybox.build(ctx, check=False)
    assert failed.returncode != 0 and "nothing:here" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_pull_flag_takes_the_registrys_newer_base(
    busybox: Buildpy, second: Buildpy, registry: Registry, tmp_path: Path
):
    ref = f"{registry.host}/pullbase:1"

    def base(version: str) -> str:
        context = write_context(
            tmp_path / version,
            {"Dockerfile": f"FROM busybox\nRUN echo {version} > /v\n"},
        )
        busybox.build(context, "-t", ref, "--push")
        return local_image(busybox, ref)["Id"]

    first = base("v1")
    second.run("pull", ref)
    newer = base("v2")  # the registry's ref moves on; the second store's does not
    app = write_context(
        tmp_path / "app", {"Dockerfile": f"FROM {ref}\nRUN cat /v > /seen\n"}
    )
    second.build(app, "-o", f"type=local,dest={tmp_path / 'kept'}")
    assert (tmp_path / "kept" / "seen").read_text() == "v1\n"
    assert local_image(second, ref)["Id"] == first
    second.build(app, "--pull", "-o", f"type=local,dest={tmp_path / 'pulled'}")
    assert (tmp_path / "pulled" / "seen").read_text() == "v2\n"
    assert local_image(second, ref)["Id"] == newer

    gone = write_context(
        tmp_path / "gone", {"Dockerfile": f"FROM {registry.host}/nothing:here\n"}
    )
    busybox.run("tag", "busybox", f"{registry.host}/nothing:here")  # local only
    assert busybox.build(gone).returncode == 0
    failed = busybox.build(gone, "--pull", check=False)
    assert failed.returncode == 3  # the FROM line, as any base image not found
    assert f"base image {registry.host}/nothing:here: --pull failed: " in (
        failed.stderr
    )
    assert "Traceback" not in failed.stderr


def _docker_config(path: Path, host: str, user: str, password: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (path / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_basic_auth_from_docker_config(
    busybox: Buildpy, auth_registry: Registry, tmp_path: Path
):
    ref = f"{auth_registry.host}/private:1"
    busybox.run("tag", "busybox", ref)
    nocreds = busybox.run(
        "push", ref, env={"DOCKER_CONFIG": str(tmp_path / "none")}, check=False
    )
    assert nocreds.returncode == 2
    assert "wants credentials" in nocreds.stderr

    wrong = _docker_config(tmp_path / "wrong", auth_registry.host, USER, "bad-guess")
    refused = busybox.run("push", ref, env={"DOCKER_CONFIG": str(wrong)}, check=False)
    assert refused.returncode == 2 and "refused" in refused.stderr
    assert "bad-guess" not in refused.stderr + refused.stdout

    good = _docker_config(tmp_path / "good", auth_registry.host, USER, PASSWORD)
    env = {"DOCKER_CONFIG": str(good)}
    done = busybox.run("push", ref, env=env)
    assert PASSWORD not in done.stderr + done.stdout
    creds = f"--creds={USER}:{PASSWORD}"
    listing = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", creds, f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(listing.stdout)["Layers"]


def test_credential_helper(busybox: Buildpy, auth_registry: Registry, tmp_path: Path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-testhelper"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'[ "$server" = "{auth_registry.host}" ] || exit 1\n'
        f'printf \'{{"Username":"{USER}","Secret":"{PASSWORD}"}}\'\n'
    )
    helper.chmod(0o755)
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps({"credHelpers": {auth_registry.host: "testhelper"}})
    )
    import os

    ref = f"{auth_registry.host}/helped:1"
    busybox.run("tag", "busybox", ref)
    env = {"DOCKER_CONFIG": str(config), "PATH": f"{bindir}:{os.environ['PATH']}"}
    busybox.run("push", ref, env=env)
    assert busybox.run("pull", ref, env=env).stdout.strip() == ref


# --- the client, directly ------------------------------------------------------


def test_chunked_upload_and_verified_download(registry: Registry, tmp_path: Path):
    data = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MiB, not a chunk multiple
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    with RegistryClient(registry.host, upload_chunk=1 << 20) as client:
        assert not client.has_blob("chunks", digest)
        client.upload_blob("chunks", digest, len(data), lambda: open(blob, "rb"))
        assert client.has_blob("chunks", digest)
        with open(tmp_path / "back", "wb") as out:
            assert client.fetch_blob("chunks", digest, out) == len(data)
    assert (tmp_path / "back").read_bytes() == data

    # A registry that serves other bytes under the digest is refused.
    hexpart = digest.removeprefix("sha256:")
    stored = registry.storage / (
        f"docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data"
    )
    stored.write_bytes(b"X" + data[1:])
    with RegistryClient(registry.host) as client, open(tmp_path / "bad", "wb") as out:
        with pytest.raises(BlobDigestMismatch, match="refused"):
            client.fetch_blob("chunks", digest, out)


def test_index_picks_the_host_platform(
    busybox: Buildpy, second: Buildpy, registry: Registry
):
    ref = f"{registry.host}/multi:1"
    busybox.run("tag", "busybox", ref)
    busybox.run("push", ref)
    manifest = skopeo_inspect(ref, raw=True)
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    with RegistryClient(registry.host) as client:
        client.put_manifest("multi", digest, raw, manifest["mediaType"])
        # Another real manifest, as an index's other platforms would be.
        other = json.dumps({**manifest, "annotations": {"x": "other"}}).encode()
        other_digest = client.put_manifest(
            "multi", "other", other, manifest["mediaType"]
        )
        bogus = {
            "mediaType": manifest["mediaType"],
            "size": len(other),
            "digest": other_digest,
        }
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {**bogus, "platform": {"os": "linux", "architecture": "s390x"}},
                {
                    "mediaType": manifest["mediaType"],
                    "size": len(raw),
                    "digest": digest,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {**bogus, "platform": {"os": "unknown", "architecture": "unknown"}},
            ],
        }
        client.put_manifest(
            "multi", "index", json.dumps(index).encode(), MEDIA_OCI_INDEX
        )
        with pytest.raises(NotFoundInRegistry):
            client.get_manifest("multi", "no-such-tag")
    second.run("pull", f"{registry.host}/multi:index")
    assert (
        local_image(second, f"{registry.host}/multi:index")["Id"]
        == manifest["config"]["digest"]
    )


def test_auth_errors_carry_no_secret(auth_registry: Registry):
    with RegistryClient(auth_registry.host, credentials=(USER, "wrong-one")) as c:
        with pytest.raises(RegistryAuthError) as err:
            c.get_manifest("private", "1")
    assert "wrong-one" not in str(err.value) and auth_registry.host in str(err.value)


def test_mirror_serves_docker_hub_names(
    busybox: Buildpy, second: Buildpy, registry: Registry, tmp_path: Path
):
    busybox.run("tag", "busybox", f"{registry.host}/library/mirrored:latest")
    busybox.run("push", f"{registry.host}/library/mirrored:latest")
    ctx = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM mirrored\nRUN echo via-mirror > /m\n"}
    )
    out = tmp_path / "rootfs"
    second.root.mkdir(parents=True, exist_ok=True)
    (second.root / "config.json").write_text(
        json.dumps({"registry-mirrors": [f"http://{registry.host}"]})
    )
    second.build(ctx, "-o", f"type=local,dest={out}")
    assert (out / "m").read_text() == "via-mirror\n"
    assert "mirrored" in second.run("images").stdout
