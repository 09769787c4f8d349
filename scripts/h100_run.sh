#!/usr/bin/env bash
# One GPU session (the H100 device machine): offline install, the GPU tests and the full kernel
# grid, then the decode-step and end-to-end benchmarks. Logs and JSON go to $OUT.
#   OUT=results bash scripts/h100_run.sh [tests,attention,decode,e2e]   (default: tests,decode,e2e;
#   one device call is <= 10 min, so split them over calls)
set -u -o pipefail
OUT=${OUT:-results}
WHAT=${1:-tests,decode,e2e}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 BATCHLLM_CACHE_DIR=/tmp/batchllm-cache
# wheels the machine lacks (orjson, gguf, typer, shellingham for its Python), carried in .whl/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1; then
  echo "editable install failed (see install.log): using the tree in place"
  ln -sfn ../../configs src/batchllm_cli/configs
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD/kernels
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
status=0
if [[ $WHAT == *tests* ]]; then
  # TESTS: pytest targets (default: every kernel test, the model and engine parity tests)
  timeout 300 python3 -m pytest -q -s -p no:cacheprovider ${TESTS:-tests/kernels tests/unit/test_model_hf_parity.py \
    tests/e2e/test_gpu_parity.py} 2>&1 | tail -60 | tee "$OUT/gpu_tests.log" || status=1
fi
if [[ $WHAT == *attention* ]]; then
  timeout 300 python3 benchmarks/bench_attention.py --out "$OUT/attention" 2>&1 | grep -v -i warn | tail -40 | tee "$OUT/attention.log" || status=1
fi
if [[ $WHAT == *decode* ]]; then
  timeout 240 python3 benchmarks/bench_decode_step.py --out "$OUT/decode_step.json" 2>&1 | tail -20 | tee "$OUT/decode_step.log" || status=1
fi
if [[ $WHAT == *e2e* ]]; then
  timeout 420 python3 benchmarks/bench_e2e.py --workloads peers-1b --out "$OUT/e2e.json" 2>&1 | tail -30 | tee "$OUT/e2e.log" || status=1
fi
exit $status
