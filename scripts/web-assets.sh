#!/usr/bin/env bash
# Fetch the third-party code that `vigil serve`'s page embeds, at a pinned version, from the
# npm registry into the git-ignored folder host/web/vendor/ (the host's build embeds it from
# there; nothing of it is committed):
#   uPlot 1.6.32 (MIT): the charts. dist/uPlot.iife.min.js, dist/uPlot.min.css and LICENSE.
# The tarball's SHA-256 is checked against the one pinned here. Idempotent: a second run finds
# the files and takes no time.
set -euo pipefail

UPLOT_VERSION="1.6.32"
UPLOT_SHA256="4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/host/web/vendor/uplot-$UPLOT_VERSION"

say() { printf 'web-assets: %s\n' "$*"; }
die() { printf 'web-assets: error: %s\n' "$*" >&2; exit 1; }

if [[ -f "$dest/uPlot.iife.min.js" && -f "$dest/uPlot.min.css" && -f "$dest/LICENSE" ]]; then
    say "uPlot $UPLOT_VERSION already in $dest"
    exit 0
fi
command -v npm >/dev/null 2>&1 || die "npm is needed to fetch uPlot $UPLOT_VERSION (Debian: apt-get install npm)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null) ||
    die "npm pack uplot@$UPLOT_VERSION failed"
tarball="$work/uplot-$UPLOT_VERSION.tgz"
got="$(sha256sum "$tarball" | cut -d' ' -f1)"
[[ "$got" == "$UPLOT_SHA256" ]] || die "uplot-$UPLOT_VERSION.tgz has SHA-256 $got, expected $UPLOT_SHA256"
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/"
say "uPlot $UPLOT_VERSION in $dest"
