#!/usr/bin/env bash
# Cross-compile the kernels' C sources for aarch64 (-mcpu=cortex-a72, the Raspberry Pi 4) into the
# test harness and run it under qemu user-mode emulation:
#   1. -cpu cortex-a72: ARMv8-A without dot-product; the runtime check must say so and the "neon"
#      path must match the exact reference and the portable scalar path.
#   2. -cpu max: a CPU with SDOT; the "neon-dotprod" path is chosen at run time and checked too.
# Needs: apt-get install -y gcc-aarch64-linux-gnu qemu-user-static
# Exit status: 0 when both runs pass, 1 on any mismatch, 2 when the tools are missing.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CSRC="$HERE/../../csrc"
CC="${AARCH64_CC:-aarch64-linux-gnu-gcc}"
QEMU="${QEMU_AARCH64:-qemu-aarch64-static}"
SYSROOT="${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"

for tool in "$CC" "$QEMU"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "run_qemu.sh: $tool not found; install: apt-get install -y gcc-aarch64-linux-gnu qemu-user-static" >&2
        exit 2
    fi
done

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

"$CC" -mcpu=cortex-a72 -O2 -std=c11 -Wall -Wextra -Wno-unused-parameter -Werror -pthread \
    -I"$CSRC" "$HERE/harness.c" "$CSRC/kernels_portable.c" "$CSRC/kernels_neon.c" \
    "$CSRC/dispatch.c" "$CSRC/ops.c" -lm -o "$OUT/harness"

status=0
echo "== qemu-aarch64 -cpu cortex-a72 (no dot-product: NEON baseline path)"
"$QEMU" -cpu cortex-a72 -L "$SYSROOT" "$OUT/harness" --expect-dotprod=0 || status=1
echo "== qemu-aarch64 -cpu max (dot-product present: SDOT path chosen at run time)"
"$QEMU" -cpu max -L "$SYSROOT" "$OUT/harness" --expect-dotprod=1 || status=1

if [ "$status" -eq 0 ]; then
    echo "ARM SUMMARY: PASS (cortex-a72 neon and max neon-dotprod match the scalar reference)"
else
    echo "ARM SUMMARY: FAIL (see MISMATCH/FAIL lines above)"
fi
exit "$status"
