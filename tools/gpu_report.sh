#!/usr/bin/env bash
# The GPU report in one command: tune SGConv2d's backends, time sgconvnext_tiny / _small against their ConvNeXt
# twins at 224 px (bf16 autocast, channels_last; eager and torch.compile; training and inference img/s, peak
# memory), tiny built for 224 and run at 1024 px, and every backend at each ConvNeXt-T stage shape; each part is
# written as a section of docs/BENCHMARKS.md (or of --write PATH). It has never run on a GPU: about 5-7 minutes on
# one H100 / H200 is an estimate, not a measurement.
#
#   tools/gpu_report.sh                          # on a CUDA machine
#   tools/gpu_report.sh --write /tmp/report.md   # somewhere else
#   tools/gpu_report.sh --reduced --write X.md   # the same steps on CPU at toy sizes (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
write=docs/BENCHMARKS.md
reduced=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reduced) reduced=1; shift ;;
        --write) write="$2"; shift 2 ;;
        *) echo "gpu_report.sh: error: unknown argument '$1' (expected --reduced, --write PATH)" >&2; exit 2 ;;
    esac
done
python=${PYTHON:-python}

if [[ $reduced == 1 ]]; then  # CPU, atto at 64 px, one timed step: checks the pipeline, not the speed
    common=(--device cpu --amp bf16 --channels-last --sg-tune --warmup 1 --steps 1 --batch-size 2)
    pairs=(--models sgconvnext_atto convnext_atto --img-size 64)
    large=(--models sgconvnext_atto convnext_atto --img-size 128 --build-size 64 --batch-size 1)
    compile=(--compile --compile-backend aot_eager)
    layer=(--device cpu --amp bf16 --channels-last --no-stages --large 16 32 --large-channels 40 --warmup 0 --runs 1)
    tag=reduced
else
    if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_report.sh: error: no CUDA device here; run it on a GPU machine, or with --reduced on CPU" >&2
        exit 1
    fi
    common=(--device cuda --amp bf16 --channels-last --sg-tune --warmup 10 --steps 30 --batch-size 128)
    pairs=(--models sgconvnext_tiny convnext_tiny --models sgconvnext_small convnext_small --img-size 224)
    large=(--models sgconvnext_tiny convnext_tiny --img-size 1024 --build-size 224 --batch-size 8)
    compile=(--compile)
    layer=(--device cuda --amp bf16 --channels-last --warmup 5 --runs 20)
    tag=gpu
fi

SECONDS=0
"$python" tools/benchmark.py "${common[@]}" "${pairs[@]}" --bench all --write "$write" --section "$tag:pairs-eager"
"$python" tools/benchmark.py "${common[@]}" "${pairs[@]}" --bench infer train "${compile[@]}" \
    --write "$write" --section "$tag:pairs-compile"
"$python" tools/benchmark.py "${common[@]}" "${large[@]}" --bench infer train --write "$write" \
    --section "$tag:large-maps"
"$python" tools/bench_sgconv.py "${layer[@]}" --write "$write"
[[ $reduced == 1 ]] || "$python" tools/bench_dense.py --bench det --device cuda --warmup 3 --runs 10 --write "$write" --section "$tag:dense-det"
echo "gpu_report.sh: wrote the sections $tag:* of $write in ${SECONDS}s" >&2
