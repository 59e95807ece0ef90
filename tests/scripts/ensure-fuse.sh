#!/bin/sh
# Make sure FUSE works here for arv-mount (the FUSE path of collection mounts): Debian's
# fuse3 (fusermount) and the headers the arvados-llfuse wheel is built against (libfuse-dev,
# pkg-config, a C compiler), and a /dev/fuse this user can open. Fails loudly when it
# cannot: the FUSE tests must run, not be skipped. arv-mount itself goes into .venv
# (`make pyenv`).
set -eu

need_packages=""
command -v fusermount >/dev/null 2>&1 || need_packages="$need_packages fuse3"
dpkg -s libfuse-dev >/dev/null 2>&1 || need_packages="$need_packages libfuse-dev"
command -v pkg-config >/dev/null 2>&1 || need_packages="$need_packages pkg-config"
command -v cc >/dev/null 2>&1 || need_packages="$need_packages gcc"
dpkg -s python3-dev >/dev/null 2>&1 || need_packages="$need_packages python3-dev"

# shellcheck disable=SC2086 # the list is split on purpose
sh "$(dirname "$0")/install-packages.sh" ensure-fuse $need_packages

if [ ! -c /dev/fuse ]; then
    if [ "$(id -u)" = 0 ]; then
        modprobe fuse 2>/dev/null || true
        [ -c /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || true
    fi
fi
if [ ! -c /dev/fuse ]; then
    echo "ensure-fuse: no /dev/fuse (in a container, start it with --device /dev/fuse --cap-add SYS_ADMIN)" >&2
    exit 1
fi
if ! ( : <>/dev/fuse ) 2>/dev/null; then
    echo "ensure-fuse: /dev/fuse exists but cannot be opened by $(id -un)" >&2
    exit 1
fi
