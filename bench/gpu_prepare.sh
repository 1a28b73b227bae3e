#!/usr/bin/env bash
# Here, before a session's first device call: put what the GPU machine lacks under .gpu/ (ignored
# by git), in pieces that fit the device tool's 64 MiB per call. See docs/cuda.md, "On a lent GPU".
#
#   .gpu/whl/     wheels for the device's Python 3.12 that its image does not hold: gguf (the model
#                 loader), structlog (engine logs), grpcio-tools (setup.py generates the protos)
#   .gpu/model.1  the default model's GGUF (94 MiB), first half
#   .gpu/model.2  second half
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/whl
platforms=()
for n in 17 27 28; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .gpu/whl \
    "gguf==0.19.0" "structlog>=24" "grpcio-tools>=1.85,<1.86"
model=$(python3 -c "from cyserve.service.config import default_model_path as d; print(d())")
half=$(( ($(stat -c %s "$model") + 1) / 2 ))
split -b "$half" -a 1 --numeric-suffixes=1 "$model" .gpu/model.
ls -l .gpu .gpu/whl
echo "carry .gpu/whl and .gpu/model.1 in the first device call, .gpu/model.2 in the second (docs/cuda.md)"
