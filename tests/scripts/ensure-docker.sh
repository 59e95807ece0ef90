#!/bin/sh
# Make sure a Docker engine answers `docker info`: if not, install Debian's docker.io (and
# busybox-static, which the test image is made from), start dockerd in the background and
# wait for it. Fails loudly when it cannot: the real-engine tests must run, not be skipped.
set -eu

need_packages=""
command -v dockerd >/dev/null 2>&1 || need_packages="$need_packages docker.io"
dpkg -s busybox-static >/dev/null 2>&1 || need_packages="$need_packages busybox-static"

# shellcheck disable=SC2086 # the list is split on purpose
sh "$(dirname "$0")/install-packages.sh" ensure-docker $need_packages

if docker info >/dev/null 2>&1; then
    exit 0
fi

echo "ensure-docker: starting dockerd" >&2
if [ "$(id -u)" != 0 ]; then
    echo "ensure-docker: dockerd is not running and only root can start it" >&2
    exit 1
fi
log=${TMPDIR:-/tmp}/crunch-run-dockerd.log
# dockerd must hold no descriptor of whoever started it (a test's lock file, a pipe a
# caller waits on): it outlives them all.
nohup python3 -c 'import os; os.closerange(3, 65536); os.execvp("dockerd", ["dockerd"])' >"$log" 2>&1 &
i=0
while ! docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 60 ]; then
        echo "ensure-docker: dockerd did not come up within 60 s; its log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    sleep 1
done
echo "ensure-docker: dockerd is up ($(docker version --format '{{.Server.Version}}'))" >&2
