#!/usr/bin/env bash
# One-time setup on Debian 12 x86-64 (as root, or with sudo): a Rust toolchain that can build
# for aarch64-unknown-linux-gnu, the cross linker, and qemu-user to run the result, so that the
# ARM NEON kernels are tested on x86 machines and in CI (see README.md here).
#
# rustup's toolchains on these machines have no aarch64 standard library (and CI has no
# network access to fetch one through rustup), so this installs Debian's rustc-web/cargo-web
# (a second, complete toolchain in /usr/bin) whose aarch64 std is packaged. ~190 MB download,
# ~0.9 GB on disk, ~1 min.
set -euo pipefail
SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
if [[ ! -x /usr/bin/rustc || ! -x /usr/bin/cargo-clippy || ! -x /usr/bin/qemu-aarch64 ||
      ! -x /usr/bin/aarch64-linux-gnu-gcc ]]; then
  $SUDO dpkg --add-architecture arm64 # only so that apt can see the arm64 std package
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends \
    rustc-web cargo-web rust-web-clippy libstd-rust-web-dev gcc-aarch64-linux-gnu \
    libc6-dev-arm64-cross qemu-user
fi
# Unpack only the aarch64 std rlibs. Not `apt-get install libstd-rust-web-dev:arm64`: that pulls
# an arm64 libc whose ld.so differs from the cross one qemu runs with, and then every
# thread::spawn (so every libtest run) hangs.
if [[ ! -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ]]; then
  d=$(mktemp -d)
  chmod 755 "$d"
  version=$(dpkg-query -Wf '${Version}' libstd-rust-web-dev)
  (cd "$d" && $SUDO apt-get download -qq "libstd-rust-web-dev:arm64=$version")
  $SUDO dpkg -x "$d"/libstd-rust-web-dev_*_arm64.deb /
  rm -rf "$d"
fi
/usr/bin/rustc --version
qemu-aarch64 --version | head -1
