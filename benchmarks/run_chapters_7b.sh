#!/usr/bin/env bash
# Every chapter's Alpaca command (as chapter 7 prints them) on the 2-layer d = 4096 bf16 model, tiny sizes,
# on CPU. Prints each chapter's wall time and peak memory (GNU time); executed notebooks go to $OUT.
#   benchmarks/make_7b_shaped.py first; then: benchmarks/run_chapters_7b.sh [chapter ...]   (default: 04 05 06 07)
set -uo pipefail  # a failing chapter is reported, and the next one still runs
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MODEL=${MODEL:-$ROOT/_build/llama7b-shape}
OUT=${OUT:-$ROOT/_build/chapters-7b}
STORE=$OUT/alpaca-sweep
export PYTHONPATH=${PYTHONPATH:-$ROOT} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
test -f "$MODEL/config.json" || { echo "no model at $MODEL: run benchmarks/make_7b_shaped.py first" >&2; exit 1; }
mkdir -p "$OUT"
common=(-p model "$MODEL" -p device cpu -p dtype bfloat16)
run() {  # chapter, papermill arguments...
  local name=$1; shift
  echo "==> $name: papermill $* "
  /usr/bin/time -f "==> $name: %e s wall, peak RSS %M KiB, exit %x" \
    "$PY" -m papermill --no-progress-bar -k python3 "$ROOT/book/$name.ipynb" "$OUT/$name.ipynb" --cwd "$OUT" "${common[@]}" "$@" \
    || { echo "==> $name FAILED (see $OUT/$name.ipynb)"; status=1; }
}
status=0
for chapter in "${@:-04 05 06 07}"; do for c in $chapter; do case $c in
  04) run 04_boundless -p layer 0 -p position resp_colon -p steps 1 -p batch_size 2 -p eval_every 1 \
        -p n_train 4 -p n_test 4 -p n_task 4 ;;
  05) run 05_sweep -p store "$STORE" -y 'layers: [0]' -y 'positions: [resp_colon]' -y 'hypotheses: [left]' \
        -y 'best_site_seeds: []' -p steps 1 -p batch_size 2 -p n_train 2 -p n_test 2 -p n_task 2 -p fresh True ;;
  06) run 06_robustness -p store "$STORE" -y 'layers: [0]' -y 'positions: [resp_colon]' \
        -y 'settings: [fixed_bracket]' \
        -p n_pairs 2 -p n_task 2 -p max_screened 4 ;;
  07) run 07_alpaca -p layer 0 -p position resp_colon -p steps 1 -p batch_size 2 -p n_train 2 -p n_test 2 ;;
  *) echo "unknown chapter $c (04, 05, 06 or 07)" >&2; exit 2 ;;
esac; done; done
exit $status
