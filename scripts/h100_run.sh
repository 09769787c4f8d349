#!/usr/bin/env bash
# One GPU session (the device machine, H100 or H200): offline install, then the steps named in
# $1 (comma list, default tests,bench,paper), all inside one ~9-minute call:
#   tests      the GPU tests and the full kernel grid                         -> tests.log
#   bench      `batchllm bench` of the PEERS.md workloads (peers-1b, industry, long prefix,
#              no sharing; Llama-3.2-1B shape, 256 requests each) against vllm-like and
#              sglang-like, $REPEATS interleaved runs                          -> peers.json, peers.png
#   paper      `batchllm bench --suite paper --scale $PAPER_SCALE` in the paper's KV regime
#              (gets whatever time is left; finished cases are kept)            -> paper.json, paper.png
#   attention, decode   the kernel and decode-step benchmarks
#   prefill    the long-context prefill launch sweep (benchmarks/bench_prefill.py) -> prefill.jsonl
# Everything goes to $OUT (default results/), flat, 8 files at most: install.log, gpu.txt,
# tests.log, bench.log and the JSON/PNG pairs (the PNGs need matplotlib's wheels in .whl/; else
# `batchllm bench --replot OUT/paper.json` draws them afterwards on any machine). The call stops
# itself after $LIMIT_S seconds (default 530): each step gets at most the time left and is then
# stopped with SIGINT (bench keeps the workloads it finished; the plot is drawn from the JSON).
#   OUT=results bash scripts/h100_run.sh                       # tests, PEERS.md bench, a small paper suite
#   PAPER_SCALE=0.05 bash scripts/h100_run.sh paper            # the paper suite alone, 5% of its requests
#   PAPER_ARGS="--cases no-sharing,shared-2000-200-d4 --model llama-3.2-1b --no-warmup" bash scripts/h100_run.sh paper
set -u -o pipefail
OUT=${OUT:-results}
WHAT=${1:-tests,bench,paper}
LIMIT_S=${LIMIT_S:-530}
REPEATS=${REPEATS:-3}
PAPER_SCALE=${PAPER_SCALE:-0.02}
END=$((SECONDS + LIMIT_S))
mkdir -p "$OUT"
# the machine's setup in one place (carried wheels, editable install, multicast off): -> install.log
source "$(dirname "$0")/gpu_setup.sh" >"$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
left() { local s=$((END - SECONDS)); ((s < $1)) && echo $s || echo "$1"; }
# runs "$@" for at most $1 seconds (and never past the call's end), SIGINT first, then KILL
limited() { local cap; cap=$(left "$1"); shift; if ((cap < 10)); then echo "skipped (no time left): $*"; return 1; fi
  timeout -s INT -k 15 "$cap" "$@"; }
BENCH=(python3 -m batchllm_cli bench)
status=0
if [[ $WHAT == *tests* ]]; then
  # TESTS: pytest targets (default: every kernel test, the model and engine parity tests)
  limited 240 python3 -m pytest -q -s -p no:cacheprovider ${TESTS:-tests/kernels tests/unit/test_model_hf_parity.py \
    tests/e2e/test_gpu_parity.py} 2>&1 | tail -60 | tee "$OUT/tests.log" || status=1
fi
if [[ $WHAT == *bench* ]]; then
  echo "== bench: PEERS.md workloads" | tee -a "$OUT/bench.log"
  limited 260 "${BENCH[@]}" peers-1b industry long-prefix-16000-d16 no-sharing --model llama-3.2-1b --requests 256 \
    --peers vllm-like,sglang-like --repeats "$REPEATS" --out "$OUT/peers.json" 2>&1 | tee -a "$OUT/bench.log" || status=1
  [[ -f $OUT/peers.json && ! -f $OUT/peers.png ]] && "${BENCH[@]}" --replot "$OUT/peers.json" 2>&1 | tee -a "$OUT/bench.log"
fi
if [[ $WHAT == *paper* ]]; then
  echo "== bench: --suite paper --scale $PAPER_SCALE" | tee -a "$OUT/bench.log"
  # shellcheck disable=SC2086  # PAPER_ARGS: extra words, e.g. "--cases no-sharing --model llama-3.2-1b"
  limited 100000 "${BENCH[@]}" --suite paper --scale "$PAPER_SCALE" --repeats "$REPEATS" ${PAPER_ARGS:-} \
    --out "$OUT/paper.json" 2>&1 | tee -a "$OUT/bench.log" || status=1
  [[ -f $OUT/paper.json && ! -f $OUT/paper.png ]] && "${BENCH[@]}" --replot "$OUT/paper.json" 2>&1 | tee -a "$OUT/bench.log"
fi
if [[ $WHAT == *attention* ]]; then
  limited 300 python3 benchmarks/bench_attention.py --out "$OUT/attention" 2>&1 | grep -v -i warn | tail -40 | tee "$OUT/attention.log" || status=1
fi
if [[ $WHAT == *decode* ]]; then
  limited 240 python3 benchmarks/bench_decode_step.py --out "$OUT/decode_step.json" 2>&1 | tail -20 | tee "$OUT/decode_step.log" || status=1
fi
if [[ $WHAT == *prefill* ]]; then
  limited 240 python3 benchmarks/bench_prefill.py --out "$OUT/prefill.jsonl" --budget-s "$(left 200)" 2>&1 | tail -12 \
    | tee "$OUT/prefill.log" || status=1
fi
exit $status
