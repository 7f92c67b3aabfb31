#!/usr/bin/env bash
# The GPU check, about 6 minutes on an NVIDIA H100:
#   1. the environment (card, driver, CuPy, PyTorch) -> environment.txt
#   2. every `gpu` test (CuPy parity of layers, directions, training, CLI) -> tests_gpu.txt
#   3. the step benchmark on the GPU, float32, batch 500, MLP and ConvNet, beside PyTorch CUDA
#      when it is importable, medians after warm-up with device synchronisation -> step_gpu.txt
#   4. the rest of the test suite on the same machine -> tests_cpu.txt
# Results go to $OUT (default bench/gpu_results/, ignored by git).
#
#   bash bench/gpu_check.sh                  # PYTHON=... to pick the interpreter (default python3)
#
# Run it from a checkout on a machine with an NVIDIA GPU, its driver and CUDA; the stages'
# time limits add up to 520 s.  It installs nothing and needs no network: the interpreter must
# already have numpy, scipy, matplotlib, tqdm, threadpoolctl, pytest and CuPy (and PyTorch, for
# the comparison); proxnp itself is taken from this checkout through PYTHONPATH.  The notebook,
# docs and assignment tests need Jupyter and Sphinx and run in CI instead.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/gpu_results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$SECONDS
stage() { echo "== $1 (at $((SECONDS - t0)) s)"; }
NOT_HERE=(--ignore=tests/test_docs.py --ignore=tests/test_notebooks.py
          --ignore=tests/test_assignments.py -p no:cacheprovider)

{
  stage environment
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PYTHON" -m proxnp info
  "$PYTHON" -c "import cupy; print('cupy', cupy.__version__, '| CUDA runtime',
      cupy.cuda.runtime.runtimeGetVersion(), '| driver', cupy.cuda.runtime.driverGetVersion())"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda,
      '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} 2>&1 | tee "$OUT/environment.txt"

{
  stage "gpu tests"
  timeout 210 "$PYTHON" -m pytest -m gpu -q -rfEs --durations=8 "${NOT_HERE[@]}" tests
  echo "pytest exit code: $?"
} 2>&1 | tee "$OUT/tests_gpu.txt"

{
  stage "step benchmark on the GPU"
  timeout 180 "$PYTHON" bench/step.py --device gpu --steps 20 --pieces
  echo "bench exit code: $?"
} 2>&1 | tee "$OUT/step_gpu.txt"

{
  stage "the other tests"
  xdist=()
  "$PYTHON" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  timeout 120 "$PYTHON" -m pytest -m "not gpu" -q -rfE "${xdist[@]}" "${NOT_HERE[@]}" tests
  echo "pytest exit code: $?"
  stage done
} 2>&1 | tee "$OUT/tests_cpu.txt"
echo "results in $OUT/"
