#!/usr/bin/env bash
# Builds, once, the Python venv that the Flower tests and examples use (flwr and
# numpy as pinned in flower/requirements.txt, from PyPI; ~300 MB, ~40 s) and
# prints its python's path. Rebuilt when requirements.txt changes. Safe to run
# from several tests at once (a lock file). FLOWER_VENV moves it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${FLOWER_VENV:-$here/../target/flower-venv}"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi
echo "$venv/bin/python"
