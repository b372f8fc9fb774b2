#!/usr/bin/env bash
# `make image`: build the user-code image for one CellProfiler version with podman, from the
# locks only, and print its reference, id, size and build time.
#   CP_VERSION       the CellProfiler version (default: the one CP_LOCK holds; another fails)
#   CP_LOCK          the CellProfiler lock (default: requirements-cellprofiler.lock)
#   IMAGE_REPOSITORY where it will be pushed (default: cpp_dagster/k8s/image.py's REPOSITORY)
#   BASE_IMAGE       the Debian base (default: made here with debootstrap, deploy/image/base.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}
python=.venv/bin/python
for tool in podman runc; do
    command -v "$tool" > /dev/null || { echo "error: $tool is not installed (apt-get install podman runc debootstrap)" >&2; exit 1; }
done
cp_lock=${CP_LOCK:-requirements-cellprofiler.lock}
cp_version=$($python -m cpp_dagster.k8s.image cp-version --lock "$cp_lock" ${CP_VERSION:+--cp-version "$CP_VERSION"})
ref=$($python -m cpp_dagster.k8s.image reference --lock "$cp_lock" --cp-version "$cp_version" \
    ${IMAGE_REPOSITORY:+--repository "$IMAGE_REPOSITORY"})
version=$($python -c 'from cpp_dagster.k8s.image import project_version; print(project_version())')
base=${BASE_IMAGE:-localhost/cpp-dagster-base:bookworm}
[ -n "${BASE_IMAGE:-}" ] || deploy/image/base.sh "$base"
# pip and uv inside the build trust the CA bundles the host's own pip and uv are told to
tls=()
for var in PIP_CERT SSL_CERT_FILE; do
    if [ -n "${!var:-}" ]; then tls+=(--build-arg "$var=${!var}"); fi
done
start=$(date +%s.%N)
podman build --layers --build-arg BASE_IMAGE="$base" --build-arg CP_VERSION="$cp_version" \
    --build-arg CP_LOCK="$cp_lock" --build-arg PROJECT_VERSION="$version" "${tls[@]}" -t "$ref" .
seconds=$(echo "$(date +%s.%N) - $start" | bc)
echo "image $ref"
podman image inspect --format 'id {{.Id}}' "$ref"
podman image inspect --format '{{.Size}}' "$ref" | awk '{printf "size %.0f MB (%.0f bytes)\n", $1 / 1e6, $1}'
printf 'build time %.0f s\n' "$seconds"
