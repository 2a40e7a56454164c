#!/usr/bin/env bash
# The aarch64 part of CI (`.ci/run` calls it): installs the cross toolchain (setup.sh), builds
# the `bitnet` library's unit tests, kernel property tests and forward-pass fixtures for
# aarch64 once, and runs them under qemu as three CPUs, one per kernel path: `max` (dotprod +
# i8mm), `neoverse-n1` (dotprod), `cortex-a72` (plain NEON). Each run also checks that runtime
# detection found exactly the paths that CPU has, and that the library's `generate` example
# (greedy, the demo model) prints the same text as the x86 build. Clippy lints the library for
# aarch64 first (x86 clippy never compiles the AArch64 kernels).
#
# Only what those need is built: the heavy dev-dependencies (tokenizers, criterion) are
# x86-64-only, and the end-to-end check runs the library's example, not `bitnet-cli`: the CLI
# has no architecture-specific code, and cross-building its server, hub and TLS dependencies
# took two thirds of this step's build time.
set -euxo pipefail
PS4='+ [${SECONDS}s] '
cd "$(dirname "$0")/../.."
start=$SECONDS

# The x86 reference text (rustup's toolchain, before env.sh points cargo elsewhere).
prompt=$'ROMEO:\n'
# Both packages named: the library is built with the features the workspace's build gave it
# (the CLI's), so after `cargo test --workspace` nothing is rebuilt.
cargo build --profile test -p bitnet -p bitnet-cli --example generate
target/debug/examples/generate -n 32 "$prompt" >target/generate-x86_64.txt

tools/aarch64/setup.sh
source tools/aarch64/env.sh
triple=aarch64-unknown-linux-gnu
tests=(-p bitnet --lib --test kernels_props --test t16_props --test forward_fixtures)
# x86 clippy never compiles the AArch64 kernels: lint them with Debian's clippy.
/usr/bin/cargo-clippy clippy --target $triple -p bitnet --all-targets -- -D warnings
"$CARGO" test --target $triple "${tests[@]}" --no-run
"$CARGO" build --target $triple --profile test -p bitnet --example generate
generate=(qemu-aarch64 "$CARGO_TARGET_DIR/$triple/debug/examples/generate")
echo "aarch64 build: $((SECONDS - start)) s"

for cpu in max:scalar,neon,dotprod,i8mm neoverse-n1:scalar,neon,dotprod cortex-a72:scalar,neon; do
  export QEMU_CPU=${cpu%%:*} BITNET_EXPECT_ISAS=${cpu#*:}
  "$CARGO" test --target $triple "${tests[@]}"
  "${generate[@]}" -n 32 "$prompt" >"target/generate-$QEMU_CPU.txt"
  cat "target/generate-$QEMU_CPU.txt"
  diff target/generate-x86_64.txt "target/generate-$QEMU_CPU.txt"
  echo "aarch64 tests as $QEMU_CPU done at $((SECONDS - start)) s"
done
