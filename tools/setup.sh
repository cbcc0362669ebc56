#!/usr/bin/env bash
# One-time setup on a fresh Debian/Ubuntu machine: system packages, a virtual environment in .venv,
# and asr with its test extras. Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# espeak-ng and flite synthesize the embedded corpus; fortunes supplies its text; libsndfile reads audio.
need=()
for pkg in espeak-ng flite fortunes libsndfile1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The torch/torchaudio pair is pinned here (pyproject only states ranges): torchaudio 2.11 needs a
# CUDA build of torch to load, and this pair installs from the local wheel cache.
if ! .venv/bin/python -c "import torch, torchaudio" >/dev/null 2>&1; then
  .venv/bin/pip install -q torch==2.14.1 torchaudio==2.11.0
fi
.venv/bin/pip install -q -e '.[test]'
echo "setup done: $(.venv/bin/python -c 'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')"
