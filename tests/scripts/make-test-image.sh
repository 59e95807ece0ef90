#!/bin/sh
# Build a tiny image from Debian's busybox-static: a rootfs with /bin/busybox and its applet
# links, `docker import`ed. Prints the image id (sha256:…).
#   make-test-image.sh TAG [NOTE]
# A distinct NOTE gives a distinct image id (tests that need an image the engine has
# never seen use that). Busybox is never committed: it comes from the host's package.
set -eu
tag=$1
note=${2:-crunch-run test image}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "make-test-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
tar -C "$root" -c . | docker import --message "$note" \
    --change 'ENV PATH=/bin' --change 'WORKDIR /root' - "$tag" >/dev/null
docker image inspect --format '{{.Id}}' "$tag"
