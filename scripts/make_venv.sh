#!/usr/bin/env bash
# Build (once) the project's virtual environment and print its path.
#
# The venv lives outside the clone, keyed by a hash of the dependency files, so a fresh CI clone
# reuses it while a changed dependency set builds a new one; a fresh machine builds it from scratch
# (about 3 minutes: torch 2.14.1 comes from this machine's disk, the rest from PyPI).
# Override the location with GRAFT_VENV=/path.
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1
root="$(cd "$(dirname "$0")/.." && pwd)"
hash="$(cat "$root"/requirements/*.txt "$root/scripts/make_venv.sh" | sha256sum | cut -c1-12)"
venv="${GRAFT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/graft-sglang/venv-$hash}"
if [ ! -f "$venv/.complete" ]; then
  echo "[make_venv] building $venv (first run on this machine: ~3 min)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  pip="$venv/bin/python -m pip"
  $pip install -q --upgrade "pip>=24" setuptools wheel >&2
  $pip install -q -r "$root/requirements/runtime.txt" >&2
  $pip install -q -r "$root/requirements/sglang.txt" -c "$root/requirements/runtime.txt" >&2
  $pip install -q --no-deps -r "$root/requirements/nodeps.txt" >&2
  # The package's metadata (its sglang.srt.plugins entry point). Code is taken from the clone
  # that runs: the Makefile puts the repo root first on PYTHONPATH, so several clones can share
  # one venv.
  $pip install -q --no-deps --no-build-isolation -e "$root" >&2
  touch "$venv/.complete"
fi
echo "$venv"
