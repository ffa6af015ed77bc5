#!/usr/bin/env bash
# Builds every Lambda function (each package in functions/) for AWS Lambda on arm64 (Graviton,
# provided.al2023), all in one cargo invocation so the shared crate and the dependencies compile
# once, then prints each function's bootstrap size and how long the build took.
#
#   bash infra/scripts/lambda-build.sh [--dry-run]
#
# From the repository root it runs
#   cargo lambda build --release --arm64 -p <function> -p <function> …   (one -p per package)
# which leaves target/lambda/<function>/bootstrap for each function. cargo-lambda (and the Zig it
# links with) is installed into .venv from tests/python/requirements.txt when missing or not the
# pinned version, and Rust's aarch64-unknown-linux-gnu standard library with rustup when missing.
# --dry-run prints the command and changes nothing. Running it again rebuilds only what changed.
set -euo pipefail

LOG_TAG=lambda-build
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

readonly ARM64_TARGET=aarch64-unknown-linux-gnu

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

dry_run=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

require_command cargo "install Rust (rustup)" || exit 1

# The workspace's target directory, then one line per package under functions/: its name and its
# binaries (each becomes target/lambda/<binary>/bootstrap).
workspace="$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
print(meta["target_directory"])
functions = os.path.join(meta["workspace_root"], "functions") + os.sep
for package in sorted(meta["packages"], key=lambda p: p["name"]):
    if package["manifest_path"].startswith(functions):
        bins = [t["name"] for t in package["targets"] if "bin" in t["kind"]]
        print(package["name"], *bins)
')" || die "cargo metadata failed"

TARGET_DIR="$(head -n 1 <<<"$workspace")"
PACKAGES=()
BINARIES=()
while read -r package bins; do
    [ -n "$package" ] || continue
    [ -n "$bins" ] || die "functions/ package $package has no binary"
    PACKAGES+=("$package")
    read -r -a names <<<"$bins"
    BINARIES+=("${names[@]}")
done < <(tail -n +2 <<<"$workspace")
[ "${#PACKAGES[@]}" -gt 0 ] || die "no packages found under functions/"

BUILD=(cargo lambda build --release --arm64)
for package in "${PACKAGES[@]}"; do
    BUILD+=(-p "$package")
done

if [ "$dry_run" -eq 1 ]; then
    log "would run in $ROOT (${#PACKAGES[@]} functions):"
    printf '%s\n' "${BUILD[*]}"
    exit 0
fi

# cargo-lambda at the version tests/python/requirements.txt pins, in the venv (with Zig, which
# it links with; `cargo lambda` finds both on PATH).
ensure_cargo_lambda() {
    local pin have=""
    pin="$(sed -n 's/^cargo-lambda==\([^[:space:]]*\).*/\1/p' "$ROOT/tests/python/requirements.txt")"
    [ -n "$pin" ] || fail "tests/python/requirements.txt does not pin cargo-lambda" || return 1
    if [ -x "$VENV_DIR/bin/cargo-lambda" ]; then
        have="$("$VENV_DIR/bin/cargo-lambda" lambda --version 2>/dev/null | awk '{print $2}')" || have=""
    fi
    if [ "$have" != "$pin" ]; then
        log "installing cargo-lambda $pin into $VENV_DIR (found: ${have:-none})"
        setup_python_venv || return 1
    fi
    [ -x "$VENV_DIR/bin/cargo-lambda" ] || fail "cargo-lambda is still missing from $VENV_DIR/bin"
}

# Rust's standard library for the arm64 target (cargo-lambda would add it too, less visibly).
ensure_arm64_target() {
    if ! command -v rustup >/dev/null 2>&1; then
        log "rustup not found: the $ARM64_TARGET standard library must already be installed"
        return 0
    fi
    if rustup target list --installed | grep -qx "$ARM64_TARGET"; then
        return 0
    fi
    log "installing the $ARM64_TARGET standard library with rustup"
    rustup target add "$ARM64_TARGET" >&2 || fail "rustup target add $ARM64_TARGET failed"
}

ensure_cargo_lambda || die "cannot install cargo-lambda"
export PATH="$VENV_DIR/bin:$PATH"
ensure_arm64_target || die "no $ARM64_TARGET target to build for"

log "$(cargo lambda --version), zig $(python3 -m ziglang version 2>/dev/null || echo '?'), $(rustc --version)"
log "building ${#PACKAGES[@]} functions: ${BUILD[*]}"
start="$(now)"
"${BUILD[@]}"
took="$(elapsed "$start")"

# Each function's bootstrap, as SAM would package it.
missing=0
total=0
printf '\n%-18s %12s %9s\n' function bytes MB
for name in "${BINARIES[@]}"; do
    bootstrap="$TARGET_DIR/lambda/$name/bootstrap"
    if [ ! -f "$bootstrap" ]; then
        printf '%-18s %12s %9s\n' "$name" missing -
        missing=$((missing + 1))
        continue
    fi
    bytes="$(wc -c <"$bootstrap" | tr -d '[:space:]')"
    total=$((total + bytes))
    printf '%-18s %12s %9s\n' "$name" "$bytes" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')"
done
printf '%-18s %12s %9s\n' total "$total" "$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1e6 }')"
printf '\nbuild time: %ss (%s functions, release, %s; MB = 10^6 bytes)\n' "$took" "${#BINARIES[@]}" "$ARM64_TARGET"
printf 'bootstraps in %s/lambda/<function>/bootstrap\n' "$TARGET_DIR"

[ "$missing" -eq 0 ] || die "$missing function(s) have no bootstrap after the build"
