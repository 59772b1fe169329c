#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs facesearch
# into it. Re-running is cheap: nothing is reinstalled unless pyproject.toml
# changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

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
# facenet-pytorch's metadata pins an old torch, numpy and Pillow that cannot be
# installed beside ours; its code runs on the pinned versions, and pyproject.toml
# lists every package it imports.
"$venv/bin/python" -m pip install --quiet --no-deps facenet-pytorch==2.6.0
touch "$stamp"
echo "Environment ready in $venv" >&2
