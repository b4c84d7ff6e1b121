#!/usr/bin/env bash
# Builds the Dockerfile and runs the image without a Docker engine or Docker Hub: buildah and
# podman from Debian's packages (vfs storage, no daemon), on a stand-in for the python:3.11-slim
# base made by debootstrap from Debian's packages. Optional, not part of `make test`; as root,
# on Debian bookworm. What it checks and what it does not: k8s/README.md.
#
#   sudo k8s/build-image-without-docker.sh          # or: make image-check
#
# Environment: WORK (default /var/tmp/veilleuse-image-check: the stand-in's root filesystem),
# MIRROR (debootstrap's Debian mirror; default debootstrap's own), REBUILD_BASE=1 (make the
# stand-in again), IMAGE (default localhost/veilleuse:check).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/var/tmp/veilleuse-image-check}"
BASE=localhost/python-bookworm-standin:3.11
IMAGE="${IMAGE:-localhost/veilleuse:check}"
BUILDAH=(buildah --storage-driver vfs)
# The cgroup manager, the runtime and the lowered limits: what a sandbox without systemd,
# with cgroup v1 and without CAP_SYS_RESOURCE needs (podman's defaults raise the limits).
PODMAN=(podman --storage-driver vfs --cgroup-manager cgroupfs)
RUN=("${PODMAN[@]}" run --rm --runtime runc --network none
    --ulimit nofile=1024:1024 --ulimit nproc=1000:1000
    --read-only --tmpfs /tmp --cap-drop all --security-opt no-new-privileges)

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
step() { printf '\n== %s\n' "$*"; }

step "tools"
missing=()
for tool in buildah podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
buildah --version; podman --version

if [ -n "${REBUILD_BASE:-}" ] || ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    step "stand-in base $BASE: debootstrap bookworm + python3 (3.11), python3-venv, python-is-python3"
    start=$SECONDS
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    mkdir -p "$WORK"
    "${BUILDAH[@]}" rmi "$IMAGE" "$BASE" >/dev/null 2>&1 || true
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
        bookworm "$rootfs" ${MIRROR:+"$MIRROR"} >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    # Security updates, as the official image has them, from the mirror debootstrap used.
    mirror="$(awk '/^deb /{print $2; exit}' "$rootfs/etc/apt/sources.list")"
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
        "$mirror" "$mirror" "$mirror" >"$rootfs/etc/apt/sources.list"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq \
        && apt-get clean && rm -rf /var/lib/apt/lists/*' >"$WORK/upgrade.log" 2>&1 \
        || { umount "$rootfs/proc"; exit 1; }
    umount "$rootfs/proc"
    : >"$rootfs/etc/resolv.conf"
    echo localhost >"$rootfs/etc/hostname"
    tar --numeric-owner -C "$rootfs" -c . | "${PODMAN[@]}" import --quiet \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
    echo "made in $((SECONDS - start)) s"
fi

step "build $IMAGE (buildah bud, chroot isolation, no cache)"
# The host's CA bundle is bind-mounted over the build's for the RUN steps only (a TLS-inspecting
# proxy's CA, where there is one): pip trusts what the host trusts; the image keeps its own.
ca=/etc/ssl/certs/ca-certificates.crt
mounts=()
[ -f "$ca" ] && mounts=(-v "$ca:$ca:ro")
mkdir -p "$WORK"
"${BUILDAH[@]}" rmi "$IMAGE" >/dev/null 2>&1 || true
start=$SECONDS
"${BUILDAH[@]}" bud --isolation chroot --no-cache --force-rm --pull=never "${mounts[@]}" \
    --build-arg PYTHON_IMAGE="$BASE" -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; exit 1; }
echo "built in $((SECONDS - start)) s (log: $WORK/build.log)"
start=$SECONDS

step "run: read-only root, /tmp a tmpfs, no capabilities, no network"
# Two containers only: with vfs storage each one starts with a full copy of the image.
help="$("${RUN[@]}" "$IMAGE")"
printf '%s\n' "$help" | head -3
"${RUN[@]}" --entrypoint sh "$IMAGE" -ec '
id; test "$(id -u)" = 10001
python -c "
import sys
from pipeline.migrations import MIGRATIONS_DIR, discover
assert MIGRATIONS_DIR.is_relative_to(sys.prefix), MIGRATIONS_DIR
try:
    import devtools
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(\"the image holds the developer tooling: \" + devtools.__file__)
print(len(discover()), \"migrations in\", MIGRATIONS_DIR)"
python -c "
import importlib, pkgutil
names = []
for top in (\"schemas\", \"pipeline\", \"connectors\", \"agents\", \"notifier\", \"api\", \"cli\"):
    found = pkgutil.walk_packages(importlib.import_module(top).__path__, top + \".\")
    names += [top] + [m.name for m in found if not m.name.endswith(\"__main__\")]
for name in names:
    importlib.import_module(name)
print(len(names), \"modules import\")"
for path in /x /app/x /opt/veilleuse/x; do
    if touch "$path" 2>/dev/null; then echo "$path is writable" >&2; exit 1; fi
done
touch /tmp/x
test -d /app
test -z "$(ls -A /app)"
test "$(stat -c %u /app)" = 0
echo "root read-only, /tmp writable, PWD=$PWD HOME=$HOME"
for command in api connector worker "sink postgres" "sink elasticsearch" notifier migrate \
        setup-search reindex; do
    veilleuse $command --help >/dev/null
done
echo "every component'"'"'s --help runs"'
echo "ran in $((SECONDS - start)) s"

step "size"
"${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($IMAGE|$BASE) "
echo "image check passed"
