#!/usr/bin/env bash
# The aarch64 part of CI (`.ci/run` calls it): installs the cross toolchain (setup.sh), builds
# the `bitnet` library's unit tests, kernel property tests and forward-pass fixtures for
# aarch64 once, and runs them under qemu as three CPUs, one per kernel path: `max` (dotprod +
# i8mm), `neoverse-n1` (dotprod), `cortex-a72` (plain NEON). Each run also checks that runtime
# detection found exactly the paths that CPU has, that `bitnet generate` (greedy) prints the
# same text as the x86 build, and shows which path `bitnet bench` ran. Clippy lints the
# library for aarch64 first (x86 clippy never compiles the AArch64 kernels).
#
# Only what those need is built: the heavy dev-dependencies (tokenizers, criterion) are
# x86-64-only, and `bitnet-cli` is built once, with the test profile's optimisation.
set -euxo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS

# The x86 reference text (rustup's toolchain, before env.sh points cargo elsewhere).
prompt='ROMEO:\n'
cargo build --profile test -p bitnet-cli --bin bitnet
target/debug/bitnet generate -p "$prompt" -n 32 --temp 0 >target/generate-x86_64.txt

tools/aarch64/setup.sh
source tools/aarch64/env.sh
triple=aarch64-unknown-linux-gnu
tests=(-p bitnet --lib --test kernels_props --test t16_props --test forward_fixtures)
# x86 clippy never compiles the AArch64 kernels: lint them with Debian's clippy.
/usr/bin/cargo-clippy clippy --target $triple -p bitnet --all-targets -- -D warnings
"$CARGO" test --target $triple "${tests[@]}" --no-run
# Without the GPU backend (--no-default-features): wgpu would double the cross build, and the
# GPU tests run on x86-64 (lavapipe).
"$CARGO" build --target $triple --profile test -p bitnet-cli --no-default-features --bin bitnet
bitnet=(qemu-aarch64 "$CARGO_TARGET_DIR/$triple/debug/bitnet")
echo "aarch64 build: $((SECONDS - start)) s"

for cpu in max:scalar,neon,dotprod,i8mm neoverse-n1:scalar,neon,dotprod cortex-a72:scalar,neon; do
  export QEMU_CPU=${cpu%%:*} BITNET_EXPECT_ISAS=${cpu#*:}
  "$CARGO" test --target $triple "${tests[@]}"
  "${bitnet[@]}" generate -p "$prompt" -n 32 --temp 0 >"target/generate-$QEMU_CPU.txt"
  cat "target/generate-$QEMU_CPU.txt"
  diff target/generate-x86_64.txt "target/generate-$QEMU_CPU.txt"
  "${bitnet[@]}" bench -m models/bitnet-shakespeare-7m-i2_s.gguf -p 16 -n 4 -r 1 -t 2 --no-bandwidth
  echo "aarch64 tests as $QEMU_CPU done at $((SECONDS - start)) s"
done
