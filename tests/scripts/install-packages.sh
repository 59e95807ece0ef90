#!/bin/sh
# Install Debian packages for an ensure-*.sh script: `install-packages.sh WHO PKG...`.
# Nothing to do without packages; without root, say what is missing and fail.
set -eu
who=$1
shift
[ $# -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ]; then
    echo "$who: need $*; run as root or install them" >&2
    exit 1
fi
echo "$who: installing $*" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "$@" >/dev/null
