#!/usr/bin/env bash
# The main job: install buildpy, make a busybox base image with `buildpy import`,
# build examples/hello (two stages, RUN steps), and show the result. Needs root and
# no registry. State goes to $BUILDPY_ROOT (default /var/lib/buildpy).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v buildpy >/dev/null || python3 -m pip install -q -e .
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

scripts/make-busybox-rootfs.sh "$work/rootfs"
buildpy import --change 'CMD ["sh"]' "$work/rootfs" busybox:latest

buildpy build --progress plain -t hello:1 examples/hello
buildpy images
buildpy inspect hello:1 | python3 -c '
import json, sys
image = json.load(sys.stdin)[0]
config = image["Config"]
print("config:", json.dumps(config["config"], indent=1))
print("layers:", len(image["Manifest"]["layers"]))
for h in config["history"]:
    print("  ", "(empty)" if h.get("empty_layer") else "(layer)", h.get("created_by", ""))
'
# The final root filesystem, and the program the image runs.
buildpy build --progress quiet -o "type=local,dest=$work/out" examples/hello >/dev/null
echo "--- /app/message.txt in the image:"
cat "$work/out/app/message.txt"
echo "--- a rebuild is all cached:"
buildpy build --progress plain -t hello:1 examples/hello 2>&1 | grep -E 'CACHED|DONE' | sort | uniq -c
