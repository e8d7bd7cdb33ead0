#!/usr/bin/env bash
# make-busybox-rootfs.sh DIR - a minimal root filesystem from the host's static
# busybox (Debian package busybox-static): every applet as a symlink, /etc/passwd
# and /etc/group with root, nobody and an unprivileged user "app" (1000).
# Used by the main job (README) and by the tests, so both build on the same base.
set -euo pipefail
dir=${1:?usage: make-busybox-rootfs.sh DIR}
busybox=/bin/busybox
# A static busybox runs inside any rootfs; ldd succeeds only on a dynamic one.
if [[ ! -x $busybox ]] || ldd "$busybox" >/dev/null 2>&1; then
    echo "make-busybox-rootfs: installing busybox-static" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
fi
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var,home/app}
chmod 1777 "$dir/tmp"
chmod 700 "$dir/root"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] && continue
    [[ -e $dir/bin/$applet ]] || ln -s busybox "$dir/bin/$applet"
done
cat > "$dir/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$dir/etc/group" <<'GROUP'
root:x:0:
app:x:1000:
extra:x:2000:app
nogroup:x:65534:
GROUP
chown 1000:1000 "$dir/home/app"
