#!/usr/bin/env bash
# Set up everything vigil needs on a bare machine, idempotently:
#   1. a Python venv with torch==2.13.0 (libtorch for tch 0.26), safetensors, tensorboard,
#      pyarrow and onnxruntime (the tests read checkpoints, event files and Parquet and run
#      exported models with them), cached OUTSIDE the repo;
#   2. the git-ignored symlink `.libtorch` -> that venv's `site-packages/torch`,
#      which `.cargo/config.toml` points LIBTORCH at;
#   3. the bench venv (scripts/bench-venv.sh): Lightning, torchmetrics and matplotlib for
#      `vigil bench`'s Lightning baseline, reusing that torch;
#   4. the MLflow venv (scripts/mlflow-venv.sh): the `mlflow` package, whose tracking server
#      and client the tests of the [mlflow] sink run;
#   5. Fashion-MNIST from Debian's `dataset-fashion-mnist` package, when apt is usable;
#   6. the dashboard's charting library (scripts/web-assets.sh: uPlot from the npm registry
#      into the git-ignored host/web/vendor/, which the build embeds);
#   7. Chromium and ChromeDriver (Debian's `chromium`, `chromium-driver`), which the
#      dashboard's tests drive, when apt is usable.
#
# Environment:
#   VIGIL_CACHE_DIR   where the venv lives (default: ${XDG_CACHE_HOME:-$HOME/.cache}/vigil)
#   VIGIL_SKIP_DATA=1 do not try to install Fashion-MNIST
#   VIGIL_SKIP_BENCH_VENV=1 do not install the bench venv (its tests then fail)
#   VIGIL_SKIP_MLFLOW_VENV=1 do not install the MLflow venv (the [mlflow] tests then fail)
#   VIGIL_SKIP_BROWSER=1 do not install Chromium (the dashboard's browser tests then fail)
# A second run finds everything in place and takes seconds.
set -euo pipefail

TORCH_VERSION="2.13.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${VIGIL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil}"
venv="$cache_dir/torch-$TORCH_VERSION"
marker="$venv/.vigil-torch-ok"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in python3.12 python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_torch() {
    if [[ -f "$marker" && -x "$venv/bin/python" ]] &&
        [[ "$(cat "$marker")" == "$TORCH_VERSION" ]]; then
        say "torch $TORCH_VERSION already cached in $venv"
        return 0
    fi
    local python
    python="$(find_python)" || die "need Python >= 3.10 with the venv module (Debian: apt-get install python3 python3-venv)"
    say "installing torch==$TORCH_VERSION into $venv (about 4.7 GB, once)"
    rm -rf "$venv"
    mkdir -p "$cache_dir"
    "$python" -m venv "$venv" || die "could not create a venv at $venv (Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "torch==$TORCH_VERSION" "safetensors>=0.4" "tensorboard==2.21.0" "pyarrow>=15" "onnxruntime>=1.20" ||
        die "pip could not install torch==$TORCH_VERSION into $venv"
    local got
    got="$("$venv/bin/python" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])')" ||
        die "torch was installed into $venv but does not import"
    [[ "$got" == "$TORCH_VERSION" ]] || die "expected torch $TORCH_VERSION in $venv, found $got"
    echo "$TORCH_VERSION" >"$marker"
    say "torch $TORCH_VERSION installed"
}

# scripts/read_run.py reads checkpoints with the safetensors package; the resume tests read
# TensorBoard files with TensorBoard's own reader; the study tests read exported Parquet with
# pyarrow; the export tests run exported ONNX files with ONNX Runtime. Caches made before they
# were part of the install get them added here.
ensure_python_packages() {
    local module package
    for package in "safetensors>=0.4:safetensors" "tensorboard==2.21.0:tensorboard" "pyarrow>=15:pyarrow" \
        "onnxruntime>=1.20:onnxruntime"; do
        module="${package##*:}"
        package="${package%:*}"
        "$venv/bin/python" -c "import $module" 2>/dev/null && continue
        say "adding $package to $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$package" ||
            die "pip could not install $package into $venv"
    done
}

link_libtorch() {
    local torch_dir
    torch_dir="$("$venv/bin/python" -W ignore -c 'import os, torch; print(os.path.dirname(torch.__file__))')" ||
        die "cannot locate the torch package inside $venv"
    [[ -f "$torch_dir/lib/libtorch_cpu.so" ]] || die "$torch_dir/lib/libtorch_cpu.so is missing: delete $venv and run again"
    ln -sfn "$torch_dir" "$repo_root/.libtorch"
    say "linked .libtorch -> $torch_dir"
}

# Run a command as root: directly, through password-less sudo, or not at all (returns 1).
as_root() {
    if [[ "$(id -u)" == "0" ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

install_browser() {
    if [[ "${VIGIL_SKIP_BROWSER:-0}" == "1" ]]; then
        say "VIGIL_SKIP_BROWSER=1: not installing Chromium"
        return 0
    fi
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        say "Chromium and ChromeDriver already installed"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        { say "skipping Chromium: apt-get not found (the dashboard's browser tests need chromium and chromedriver on PATH)"; return 0; }
    say "installing Chromium and ChromeDriver (apt-get install chromium chromium-driver)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null ||
            { say "could not install chromium and chromium-driver (not root, or apt failed); the dashboard's browser tests need them"; return 0; }
    fi
    say "Chromium installed"
}

install_fashion_mnist() {
    local dir=/usr/share/datasets/fashion-mnist
    if [[ "${VIGIL_SKIP_DATA:-0}" == "1" ]]; then
        say "VIGIL_SKIP_DATA=1: not installing Fashion-MNIST"
        return 0
    fi
    if [[ -f "$dir/train-images-idx3-ubyte.gz" && -f "$dir/t10k-labels-idx1-ubyte.gz" ]]; then
        say "Fashion-MNIST already present in $dir"
        return 0
    fi
    local sudo=""
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            say "skipping Fashion-MNIST: not root and no password-less sudo (install the Debian package dataset-fashion-mnist by hand, or train with data = \"synthetic\")"
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "skipping Fashion-MNIST: apt-get not found (train with data = \"synthetic\", or put the IDX .gz files in a directory and set data_dir)"
        return 0
    fi
    say "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null ||
            { say "could not install dataset-fashion-mnist; the tests use synthetic data, quickstart needs it"; return 0; }
    fi
    say "Fashion-MNIST installed in $dir"
}

install_bench_venv() {
    if [[ "${VIGIL_SKIP_BENCH_VENV:-0}" == "1" ]]; then
        say "VIGIL_SKIP_BENCH_VENV=1: not installing the bench venv"
        return 0
    fi
    bash "$repo_root/scripts/bench-venv.sh" >/dev/null || die "could not install the bench venv (scripts/bench-venv.sh)"
}

install_mlflow_venv() {
    if [[ "${VIGIL_SKIP_MLFLOW_VENV:-0}" == "1" ]]; then
        say "VIGIL_SKIP_MLFLOW_VENV=1: not installing the MLflow venv"
        return 0
    fi
    bash "$repo_root/scripts/mlflow-venv.sh" >/dev/null || die "could not install the MLflow venv (scripts/mlflow-venv.sh)"
}

install_torch
ensure_python_packages
link_libtorch
install_bench_venv
install_mlflow_venv
install_fashion_mnist
bash "$repo_root/scripts/web-assets.sh" || die "could not fetch the dashboard's charting library (scripts/web-assets.sh)"
install_browser
say "done"
