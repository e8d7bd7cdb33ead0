#!/usr/bin/env bash
# make-python-base.sh - make debian:bookworm and python:3.11-slim in the local store,
# with no Docker Hub: debootstrap a Debian bookworm root filesystem from this
# machine's configured mirror, import it with buildpy, then build
# examples/python-base on it (Debian's Python 3.11, pip, and the host's CA bundle,
# through which this machine reaches PyPI). State: $BUILDPY_ROOT or --root default.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${BUILDPY_DEBIAN_CACHE:-/var/tmp/buildpy-debian-bookworm}
if [[ ! -f $cache/.complete ]]; then
    rm -rf "$cache"
    scripts/make-debian-rootfs.sh "$cache/rootfs" bookworm
    touch "$cache/.complete"
fi
buildpy import -c 'CMD ["bash"]' "$cache/rootfs" debian:bookworm

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp examples/python-base/Dockerfile "$context/"
cp /etc/ssl/certs/ca-certificates.crt "$context/"
buildpy build --progress "${BUILDKIT_PROGRESS:-plain}" -t python:3.11-slim "$context"
