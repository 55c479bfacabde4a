#!/usr/bin/env bash
# Install GenSAR into .venv on a fresh machine. GENSAR_GPU=1 installs onnxruntime-gpu instead of onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# pip warns about every unreachable extra index of this machine's pip config; keep real errors only
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet .venv/bin/python -m pip install -q --upgrade pip
# torch first, exactly this version: any other spec pulls several GB of CUDA wheels on a CPU machine
quiet .venv/bin/python -m pip install -q "torch==2.13.0"
extra="cpu"; [ "${GENSAR_GPU:-0}" = "1" ] && extra="gpu"
quiet .venv/bin/python -m pip install -q -e ".[${extra},dev]"
.venv/bin/python -c "import gensar, torch, onnxruntime; print('gensar', gensar.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
