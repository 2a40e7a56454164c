#!/usr/bin/env bash
# Builds the `bitnet` binary the container image ships: the Dockerfile's build stage runs this,
# and CI runs it outside a container (no container tool runs there) in the test profile it has
# already built. PROFILE: release (the image) or test (CI). Writes the binary to $1.
#
# No RUSTFLAGS and no target-cpu: the kernels pick AVX2, AVX-512 or AVX-512 VNNI at run time,
# so one image serves every x86-64 CPU (a binary built for the build machine's CPU would die
# with SIGILL on an older one). The check below fails the build if that ever changes.
set -euo pipefail
out=${1:?usage: deploy/build.sh OUTPUT}
profile=${PROFILE:-release}
cd "$(dirname "$0")/.."
if [[ "${RUSTFLAGS:-}${CARGO_BUILD_RUSTFLAGS:-}" == *target-cpu* ]] ||
    grep -qs 'target-cpu' .cargo/config.toml .cargo/config; then
    echo "deploy/build.sh: the image must not be built for one CPU (target-cpu found)" >&2
    exit 1
fi
cargo build --locked --profile "$profile" -p bitnet-cli --bin bitnet
dir=$profile
[[ $profile == test ]] && dir=debug
install -m 0755 "target/$dir/bitnet" "$out"
