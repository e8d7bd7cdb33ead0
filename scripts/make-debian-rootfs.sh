#!/usr/bin/env bash
# make-debian-rootfs.sh DIR [SUITE] - a minimal Debian root filesystem made with
# debootstrap --variant=minbase from the mirror this machine's apt is configured
# with (read from the apt sources at run time, never written down here), slimmed as
# an image would be: no downloaded .debs, no apt lists, no host resolv.conf.
set -euo pipefail
dir=${1:?usage: make-debian-rootfs.sh DIR [SUITE]}
suite=${2:-bookworm}

mirror=""
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
    mirror=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^(http|https|file):/) {print $i; exit}}' /etc/apt/sources.list)
fi
[[ -n $mirror ]] || { echo "make-debian-rootfs: no Debian mirror in /etc/apt" >&2; exit 1; }

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
debootstrap --variant=minbase "$suite" "$dir" "$mirror" >&2
rm -f "$dir"/var/cache/apt/archives/*.deb
rm -rf "$dir"/var/lib/apt/lists/*
mkdir -p "$dir/var/lib/apt/lists/partial"
: > "$dir/etc/resolv.conf"
: > "$dir/etc/hostname"
# Mount points of a running container, not content of the image.
rm -rf "$dir"/dev/* "$dir"/proc/* "$dir"/sys/*
