#!/usr/bin/env bash
# The Debian bookworm base of the user-code image, made from Debian's packages with
# debootstrap, for a machine that reaches Debian's mirror but no container registry (where
# one is reachable, `make image BASE_IMAGE=debian:bookworm-slim` uses the official one).
# It gets apt's sources as this machine has them and this machine's extra CA certificates,
# so that apt, pip and uv inside the build reach the mirror and PyPI as the host does.
#   deploy/image/base.sh IMAGE        (kept: made again only after `podman rmi IMAGE`)
set -euo pipefail
image=${1:?usage: base.sh IMAGE}
if podman image exists "$image"; then
    echo "base image $image: present"
    exit 0
fi
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/cpp-dagster-base.XXXXXX)
trap 'rm -rf "$root" "$root.log"' EXIT
echo "base image $image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" > "$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
if [ -f /etc/apt/sources.list.d/debian.sources ]; then  # updates and security, as apt has them here
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
    rm -f "$root/etc/apt/sources.list"
fi
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$root" update-ca-certificates > /dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$image"
