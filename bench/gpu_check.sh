#!/usr/bin/env bash
# One prepared GPU check (issue 8): the whole test suite including the `gpu` tests, then the
# step benchmark on the GPU (MLP and ConvNet, batch 500, float32) beside PyTorch CUDA when it is
# installed. Results go to $OUT (default bench/gpu_results/); it should finish within ~8 minutes.
#
#   bash bench/gpu_check.sh            # on a machine with an NVIDIA GPU and CuPy (or the gpu extra)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_results}
mkdir -p "$OUT"
python -m pip install -q -e ".[test]" >"$OUT/pip.log" 2>&1 || echo "pip install failed (see $OUT/pip.log)"
python -c "import cupy" 2>/dev/null || python -m pip install -q "cupy-cuda12x>=14" >>"$OUT/pip.log" 2>&1
{
  echo "## environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python -m proxnp info
  python -c "import cupy; print('cupy', cupy.__version__)" 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
} | tee "$OUT/environment.txt"
timeout 300 python -m pytest -q -x -m "gpu or not gpu" tests --ignore=tests/test_docs.py \
    --ignore=tests/test_notebooks.py --ignore=tests/test_assignments.py 2>&1 | tail -30 | tee "$OUT/tests.txt"
timeout 240 python bench/step.py --device gpu --steps 20 2>&1 | tee "$OUT/step_gpu.txt"
echo "results in $OUT/"
