#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command, for a machine that has
# one. Uses that machine's python3 and its CUDA build of torch (no venv, no network):
#   1. builds gru_torch in place for this GPU's architecture, with the CUDA kernels;
#   2. runs the CUDA tests (the emulated tests' GPU twins) and the codegen check;
#   3. runs compute-sanitizer memcheck and racecheck on a small run of every kernel;
#   4. benchmarks the fused kernel against nn.GRU (cuDNN) and the reference: the
#      notebooks' shapes (1 layer; 2 layers bidirectional) and a sweep, float32 and
#      bfloat16, CUDA-event medians, into benchmarks/results/<gpu>*.json; and the
#      fused LSTM and RNN (tanh, relu) kernels against nn.LSTM / nn.RNN (cuDNN) at the
#      notebooks' shapes, into benchmarks/results/<gpu>-<cell>*.json.
# Everything it prints is also written to benchmarks/results/<gpu>-gpu-check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA GPU here')"
slug=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
out=benchmarks/results
mkdir -p "$out"
exec > >(tee "$out/$slug-gpu-check.log") 2>&1
echo "== $(date -u) on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')"
arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
echo "== build (TORCH_CUDA_ARCH_LIST=$arch)"
GRU_TORCH_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" "$PY" setup.py -q build_ext --inplace
echo "== CUDA tests"
"$PY" -m pytest -q -rs tests/test_emulator.py tests/test_cuda_kernels.py tests/test_cuda_family.py -k cuda
echo "== compute-sanitizer"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" scripts/gpu_smoke.py
done
echo "== benchmarks"
"$PY" scripts/benchmark.py --device cuda --shapes notebooks --dtype float32,bfloat16 --out "$out/$slug.json"
"$PY" scripts/benchmark.py --device cuda --shapes notebooks --layers 2 --bidirectional \
  --dtype float32,bfloat16 --out "$out/$slug-2layer-bi.json"
"$PY" scripts/benchmark.py --device cuda --shapes sweep --backends fused,cudnn --dtype float32,bfloat16 \
  --repeats 20 --out "$out/$slug-sweep.json"
for cell in lstm rnn_tanh rnn_relu; do
  "$PY" scripts/benchmark.py --device cuda --cell "$cell" --shapes notebooks --backends fused,cudnn \
    --dtype float32,bfloat16 --out "$out/$slug-$cell.json"
  "$PY" scripts/benchmark.py --device cuda --cell "$cell" --shapes notebooks --layers 2 --bidirectional \
    --backends fused,cudnn --dtype float32,bfloat16 --out "$out/$slug-$cell-2layer-bi.json"
done
echo "== done: $out/$slug*.json, $out/$slug-gpu-check.log"
