#!/usr/bin/env bash
# Chapter 8 on a GPU over the paper's grid layout (book/params/08_finetuned.gpu.yml), run where
# benchmarks/gpu_check.sh runs (its wheels installed, SmolLM2's GGUF assembled: benchmarks/README.md):
#   benchmarks/gpu_finetuned.sh OUT [TIMEOUT_S]
# writes OUT/08_finetuned_gpu.ipynb (the executed chapter) and OUT/finetuned_gpu.json (the sweep's frame and
# what ran it), which goes to das_lib/assets/runs/ for chapter 8 to show beside its CPU grid.
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_finetuned.sh OUT [TIMEOUT_S]}
mkdir -p "$out" /tmp/das_ch8
PY=${PY:-python3}
if [ -d /tmp/das_site ]; then export PYTHONPATH=/tmp/das_site${PYTHONPATH:+:$PYTHONPATH}; fi  # gpu_check.sh's wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
timeout "${2:-400}" $PY -m papermill book/08_finetuned.ipynb "$out/08_finetuned_gpu.ipynb" -f book/params/08_finetuned.gpu.yml \
  -p device cuda -p store /tmp/das_ch8/store -p export "$out/finetuned_gpu.json" --cwd /tmp/das_ch8 -k python3 \
  --log-output --no-progress-bar
echo "==> chapter 8 on the GPU: exit $?, $(( $(date +%s) - start )) s"
