#!/usr/bin/env bash
# The bench venv: Lightning, torchmetrics and matplotlib for bench/lightning_baseline.py,
# torchvision (with Pillow) for bench/decode_baseline.py, and Cockpit with BackPACK (the peer
# of the instrument plugins: host/tests/instruments.rs, `vigil bench --instruments`),
# beside the torch venv that scripts/bootstrap.sh made (run that first). The bench venv sees
# that venv's packages through a .pth file, so torch 2.13.0 is not downloaded a second time
# and Lightning trains with the very same libtorch as vigil and the plain Python loop.
#
#   bash scripts/bench-venv.sh        # prints the bench venv's python at the end
#
# Environment: VIGIL_CACHE_DIR as for bootstrap.sh. A second run takes seconds.
set -euo pipefail

TORCH_VERSION="2.13.0"
LIGHTNING_VERSION="2.6.6"
TORCHVISION_VERSION="0.28.0"   # the release that pairs with torch 2.13.0
COCKPIT_VERSION="1.0.2"
BACKPACK_VERSION="1.7.1"
STAMP="lightning $LIGHTNING_VERSION torchvision $TORCHVISION_VERSION cockpit $COCKPIT_VERSION backpack $BACKPACK_VERSION"
cache_dir="${VIGIL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil}"
torch_venv="$cache_dir/torch-$TORCH_VERSION"
venv="$cache_dir/bench-lightning"
marker="$venv/.vigil-bench-ok"

say() { printf 'bench-venv: %s\n' "$*" >&2; }
die() { printf 'bench-venv: error: %s\n' "$*" >&2; exit 1; }

[[ -x "$torch_venv/bin/python" ]] || die "no torch venv at $torch_venv: run scripts/bootstrap.sh first"
if [[ -f "$marker" && "$(cat "$marker")" == "$STAMP" ]]; then
    say "$STAMP already in $venv"
    echo "$venv/bin/python"
    exit 0
fi
rm -rf "$venv"
"$torch_venv/bin/python" -m venv --without-pip "$venv" 2>/dev/null ||
    "$torch_venv/bin/python" -m venv "$venv" || die "could not create a venv at $venv"
torch_site="$("$torch_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
bench_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$bench_site"
echo "$torch_site" >"$bench_site/vigil-torch-venv.pth"
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    "$venv/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 || die "no pip in $venv (Debian: apt-get install python3-venv)"
fi
say "installing lightning==$LIGHTNING_VERSION, torchmetrics and matplotlib into $venv (torch comes from $torch_venv)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "torch==$TORCH_VERSION" "lightning==$LIGHTNING_VERSION" "torchmetrics>=1.4" "matplotlib>=3.8" ||
    die "pip could not install Lightning into $venv"
# --no-deps: torchvision's dependencies (torch, numpy) come from the torch venv; Pillow is its
# only other one.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    "torchvision==$TORCHVISION_VERSION" "pillow>=10" ||
    die "pip could not install torchvision into $venv"
"$venv/bin/python" -W ignore -c 'import torchvision, PIL' ||
    die "torchvision was installed into $venv but does not import"
# Cockpit 1.0.2 imports pkg_resources, which setuptools 70 removed; --no-deps keeps BackPACK
# from replacing the torch venv's torch (its own dependencies are listed here instead, with
# torch held at the venv's version).
say "installing cockpit-for-pytorch==$COCKPIT_VERSION and backpack-for-pytorch==$BACKPACK_VERSION"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    "cockpit-for-pytorch==$COCKPIT_VERSION" "backpack-for-pytorch==$BACKPACK_VERSION" \
    "setuptools<70" "einops>=0.3,<1" "unfoldNd>=0.2,<1" "json-tricks>=3.15" ||
    die "pip could not install Cockpit and BackPACK into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -c <(echo "torch==$TORCH_VERSION") "scipy>=1.10" "pandas>=2.0" "seaborn>=0.12" ||
    die "pip could not install Cockpit's dependencies into $venv"
"$venv/bin/python" -W ignore -c 'import cockpit, backpack; from cockpit.utils.configuration import configuration' ||
    die "Cockpit was installed into $venv but does not import"
got="$("$venv/bin/python" -W ignore -c 'import torch, lightning; print(torch.__version__.split("+")[0], lightning.__version__)')" ||
    die "Lightning was installed into $venv but does not import"
[[ "$got" == "$TORCH_VERSION $LIGHTNING_VERSION" ]] || die "expected torch $TORCH_VERSION and Lightning $LIGHTNING_VERSION in $venv, found $got"
echo "$STAMP" >"$marker"
say "ready: torch and Lightning $got"
echo "$venv/bin/python"
