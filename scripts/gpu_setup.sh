#!/usr/bin/env bash
# Source this first on the GPU machine (the device tool's H200): installs the carried wheels
# (.whl/: orjson and gguf for its Python; `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 -d .whl orjson gguf` here) and this tree.
export PYTHONUNBUFFERED=1 BATCHLLM_CACHE_DIR=/tmp/batchllm-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1; then
  echo "editable install failed (see install.log): using the tree in place"
  ln -sfn ../../configs src/batchllm_cli/configs
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD/kernels
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
