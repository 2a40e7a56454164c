# Source after setup.sh: then `"$CARGO" test --target aarch64-unknown-linux-gnu ...` builds with
# Debian's toolchain (rustup's comes first on PATH and has no aarch64 std, so call "$CARGO",
# not `cargo`) and runs each test binary under qemu-user.
#
# The emulated CPU is read from QEMU_CPU when each binary starts, so one build serves all:
#   QEMU_CPU=max          dotprod + i8mm (+ SVE): Graviton3 / Apple M2-like (the default)
#   QEMU_CPU=neoverse-n1  dotprod, no i8mm: Graviton2 / Apple M1-like
#   QEMU_CPU=cortex-a72   plain NEON: Raspberry Pi 4
# Runtime feature detection sees the emulated CPU, and qemu raises SIGILL for an instruction it
# lacks, so each kernel path can be forced and checked. qemu's speed says nothing about ARM's.
export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
export QEMU_CPU=${QEMU_CPU:-max}
# A separate target dir keeps the two toolchains from rebuilding each other's artifacts.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/aarch64-cross}
