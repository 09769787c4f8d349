set -u
export PYTHONUNBUFFERED=1
V=benchmarks/results/tune_decode_run5_variants.json
P=benchmarks/results/tune_decode_run5_prefill_variants.json
PYTHONPATH=$PWD/src:$PWD/kernels timeout 150 python3 benchmarks/tune_decode.py --out $OUT/tune5.jsonl --budget-s 100 --layouts token --cases 1x64,4x64,256x1,64x1,16x16,64x4 --variants "$(cat $V)" --prefill --prefill-variants "$(cat $P)" 2>&1 | grep -v -i warn | cut -c1-700
OUT=$OUT bash scripts/h100_run.sh tests,attention 2>&1 | grep -E "passed|failed|^\| |exact" | tail -16
