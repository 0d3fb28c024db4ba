#!/usr/bin/env bash
# Build (or reuse) an arm64 sysroot in which edge-rt runs for real under qemu user-mode emulation:
# Debian's arm64 CPython 3.11 (from the distribution this machine's apt sources name) with its
# headers, and edgert-core's runtime dependencies (pyproject.toml `dependencies`) as aarch64 wheels
# from PyPI, installed into the sysroot's dist-packages. Used by
# plugins/neon_kernels/tests/test_neon_arm_e2e.py and .ci/run.
#
#   bash scripts/arm_sysroot.sh          # prints the sysroot's path on its last line
#
# Where: $EDGERT_ARM_SYSROOT (default /var/cache/edgert-arm): the sysroot is its `sysroot/`; the
# private apt state, the .debs and pip's cache sit beside it. A second run with the same inputs
# (this script and the dependency list) only checks a stamp file and prints the path.
#
# The host is left alone: apt runs with a private state dir, status file and cache, and with
# arm64 as its only architecture (no `dpkg --add-architecture`, no binfmt registration); the
# .debs are unpacked with dpkg-deb, never installed, and no maintainer script runs.
# Needs: apt-get, dpkg-deb, a host python >= 3.11 with pip ($EDGERT_ARM_HOST_PYTHON, default the
# repo's .venv/bin/python, else python3), the package registries for the first build, and write
# access to the cache folder (root, as in CI, for the default one).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${EDGERT_ARM_SYSROOT:-/var/cache/edgert-arm}"
HOST_PY="${EDGERT_ARM_HOST_PYTHON:-$REPO/.venv/bin/python}"
[ -n "${EDGERT_ARM_HOST_PYTHON:-}" ] || [ -x "$HOST_PY" ] || HOST_PY="$(command -v python3 || true)"
SYSROOT="$CACHE/sysroot"
PYVER=3.11
STAMP="$SYSROOT/.edgert-sysroot-stamp"
# Runtime packages of Debian's python3.11 whose dependency closure makes the interpreter, plus the
# C++ runtime that manylinux wheels may link (numpy 2.x does), minus what only Debian's package
# tools and perl need (nothing Python imports).
DEB_ROOTS=(python3.11-minimal libpython3.11-stdlib libstdc++6)
DEB_SKIP='^(perl|perl-base|perl-modules-.*|libperl.*|dpkg|tar|install-info|mailcap|mime-support|readline-common)$'
# Headers only (for building C extensions): unpacked without their dependencies.
DEB_HEADERS=(libpython3.11-dev)
# Wheels: every manylinux tag this Debian's glibc (2.36) runs, down to manylinux2014 (glibc 2.17);
# pip takes each --platform literally, so all are listed.
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done

log() { echo "arm_sysroot: [${SECONDS}s] $*" >&2; }
# The newest downloaded .deb of package $1 (arm64 or architecture-independent).
deb_of() {
    local f
    f=$(find "$CACHE/debs" -maxdepth 1 \( -name "${1}_*_arm64.deb" -o -name "${1}_*_all.deb" \) \
        | sort -V | tail -n1)
    [ -n "$f" ] || { log "no .deb downloaded for $1"; return 1; }
    echo "$f"
}

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool not found (a Debian host is needed)"; exit 2; }
done
[ -n "$HOST_PY" ] && [ -x "$HOST_PY" ] || { log "no host python (set EDGERT_ARM_HOST_PYTHON)"; exit 2; }

# The runtime dependencies, as the project declares them (markers are evaluated by pip for 3.11).
mapfile -t DEPS < <("$HOST_PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
)
want="$( { cat "$0"; printf '%s\n' "${DEPS[@]}"; } | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$SYSROOT/usr/bin/python$PYVER" ]; then
    log "up to date ($SYSROOT)"
    echo "$SYSROOT"
    exit 0
fi

start=$(date +%s)
mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ] || { log "cannot write $CACHE (set EDGERT_ARM_SYSROOT)"; exit 2; }
mkdir -p "$CACHE/apt/state/lists/partial" "$CACHE/apt/cache/archives/partial" "$CACHE/debs"
: > "$CACHE/apt/status"  # nothing is installed in the eyes of this apt
APT_OPTS=(
    -o APT::Architecture=arm64 -o APT::Architectures=arm64
    -o Dir::State="$CACHE/apt/state" -o Dir::State::status="$CACHE/apt/status"
    -o Dir::Cache="$CACHE/apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root
)
log "apt (arm64, private state in $CACHE/apt): update"
apt-get "${APT_OPTS[@]}" -qq update
mapfile -t PKGS < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "${DEB_ROOTS[@]}" \
    | grep -v '^[ <]' | grep -Ev "$DEB_SKIP" | sort -u)
log "download ${#PKGS[@]} + ${#DEB_HEADERS[@]} arm64 packages"
(cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" -qq download "${PKGS[@]}" "${DEB_HEADERS[@]}")

# A fresh tree beside the old one, swapped in at the end: a failed build leaves no half sysroot.
NEW="$CACHE/sysroot.new"
rm -rf "$NEW"
mkdir -p "$NEW/usr/bin" "$NEW/usr/lib" "$NEW/usr/sbin"
for d in bin lib sbin; do ln -s "usr/$d" "$NEW/$d"; done  # merged /usr, as Debian lays it out
for pkg in "${PKGS[@]}"; do
    deb=$(deb_of "$pkg")
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$NEW" --keep-directory-symlink --no-same-owner
done
for pkg in "${DEB_HEADERS[@]}"; do
    deb=$(deb_of "$pkg")
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$NEW" --keep-directory-symlink --no-same-owner \
        --wildcards './usr/include/*'
done
# Absolute symlinks would point into the host's /; make them relative to the sysroot.
while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    case "$target" in
        /*) ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$NEW$target")" "$link" ;;
    esac
done < <(find "$NEW" -type l -print0)
[ -x "$NEW/usr/bin/python$PYVER" ] || { log "python$PYVER missing from the packages"; exit 1; }
[ -f "$NEW/usr/include/python$PYVER/Python.h" ] || { log "Python.h missing"; exit 1; }

SITE="$NEW/usr/lib/python3/dist-packages"  # on Debian's sys.path for prefix /usr
mkdir -p "$SITE"
log "pip: aarch64 wheels of ${DEPS[*]}"
# (pip's notes about index folders of this machine's pip configuration that do not exist are
# filtered out; every other line and pip's exit status come through.)
PIP_CACHE_DIR="$CACHE/pip-cache" "$HOST_PY" -m pip install -q --disable-pip-version-check \
    --target "$SITE" --only-binary=:all: "${PLATFORMS[@]}" --implementation cp \
    --python-version "$PYVER" --no-compile --no-warn-script-location "${DEPS[@]}" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2

rm -rf "$SYSROOT"
mv "$NEW" "$SYSROOT"
# Byte-compile on the host (the same 3.11 bytecode) where the files now are, so the emulated
# interpreter does not compile the standard library and the wheels on its first imports.
"$HOST_PY" -m compileall -q -j 2 "$SYSROOT/usr/lib/python$PYVER" "$SYSROOT/usr/lib/python3" \
    >/dev/null || true
QEMU="${QEMU_AARCH64:-qemu-aarch64-static}"
if command -v "$QEMU" >/dev/null 2>&1; then
    # Smoke check: the arm64 interpreter imports every package of the declared dependencies (a
    # shared library that a wheel needs and the sysroot lacks shows up here, not in a test).
    "$QEMU" -cpu cortex-a72 -L "$SYSROOT" "$SYSROOT/usr/bin/python$PYVER" -I - "${DEPS[@]}" <<'EOF'
import importlib, platform, re, sys
from importlib import metadata
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
wanted = {norm(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]) for r in sys.argv[1:]}
wanted.discard("tomli")  # for Python < 3.11 only
by_module = metadata.packages_distributions()
found = {norm(d) for ds in by_module.values() for d in ds}
assert wanted <= found, f"not installed: {sorted(wanted - found)}"
modules = sorted(m for m, ds in by_module.items()
                 if not m.startswith("_") and any(norm(d) in wanted for d in ds))
for m in modules:
    importlib.import_module(m)
print(f"arm_sysroot: {platform.machine()} python {platform.python_version()} imports",
      " ".join(modules), file=sys.stderr)
EOF
else
    log "$QEMU not found: the sysroot's interpreter was not tried"
fi
echo "$want" > "$STAMP"  # last: an interrupted build is redone next time
log "built $SYSROOT in $(( $(date +%s) - start )) s ($(du -sh "$SYSROOT" | cut -f1))"
echo "$SYSROOT"
