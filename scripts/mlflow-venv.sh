#!/usr/bin/env bash
# The MLflow venv: the `mlflow` package (its tracking server and its client) for the tests of
# vigil's [mlflow] sink, which start a real `mlflow server` on 127.0.0.1 and read runs back
# with MlflowClient. Cached outside the repo beside the torch venv; it needs no torch.
#
#   bash scripts/mlflow-venv.sh        # prints the venv's python at the end
#
# Environment: VIGIL_CACHE_DIR as for bootstrap.sh. A second run takes seconds.
set -euo pipefail

MLFLOW_VERSION="3.17.2"
STAMP="mlflow $MLFLOW_VERSION"
cache_dir="${VIGIL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil}"
venv="$cache_dir/mlflow-$MLFLOW_VERSION"
marker="$venv/.vigil-mlflow-ok"

say() { printf 'mlflow-venv: %s\n' "$*" >&2; }
die() { printf 'mlflow-venv: error: %s\n' "$*" >&2; exit 1; }

if [[ -f "$marker" && "$(cat "$marker")" == "$STAMP" ]]; then
    say "$STAMP already in $venv"
    echo "$venv/bin/python"
    exit 0
fi
python="$(command -v python3 || true)"
[[ -n "$python" ]] || die "no python3 on PATH (Debian: apt-get install python3 python3-venv)"
rm -rf "$venv"
mkdir -p "$cache_dir"
"$python" -m venv "$venv" || die "could not create a venv at $venv (Debian: apt-get install python3-venv)"
say "installing mlflow==$MLFLOW_VERSION into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "mlflow==$MLFLOW_VERSION" || die "pip could not install mlflow into $venv"
"$venv/bin/python" -W ignore -c 'import mlflow; from mlflow.tracking import MlflowClient' ||
    die "mlflow was installed into $venv but does not import"
[[ -x "$venv/bin/mlflow" ]] || die "the mlflow command is missing from $venv/bin"
echo "$STAMP" >"$marker"
say "ready: $("$venv/bin/python" -c 'import mlflow; print("mlflow", mlflow.__version__)')"
echo "$venv/bin/python"
