#!/usr/bin/env bash
# GMP-ATL on a GPU machine lent by the `device` tool (docs/developing.md, "GPU runs"). Material from
# scripts/device/pack.py arrives in .gpu/a and .gpu/b (two calls to one warm machine) and is unpacked to /tmp.
#   unpack              install the wheels, restore the encoder's hub cache (fp32), copy the speakers present
#   smoke               unpack + one fold of all three stages on part a's speakers, 1-2 epochs per stage
#   step                time one whole-encoder fine-tuning step (bench/finetune_step.py)
#   kmeans              k-means timings on the corpus's layer -3 frames: torch on the GPU vs MiniBatchKMeans
#   full                unpack + k-means timings (torch, GPU) + configs/ravdess/gmp-atl-gpu.yaml as an ablation
#                       (rows stage1, full, no_gmp; three processes of two folds) + MiniBatchKMeans timings
# Everything worth keeping is written under $OUT (at most 8 files come back).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export SERKIT_DATA=/tmp/serkit-data HF_HUB_CACHE=/tmp/hf-cache HF_HUB_OFFLINE=1 SERKIT_CACHE=/tmp/serkit-cache
export PYTHONPATH=/tmp/site:$PWD/src

unpack() {
    if [ -d .gpu/a/wheels ] && [ ! -e /tmp/site/.done ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu/a/wheels/*.whl && touch /tmp/site/.done || exit 1
    fi
    if [ -d .gpu/a/hub ] && [ ! -e /tmp/hf-cache/.done ]; then
        mkdir -p /tmp/hf-cache && cp -r .gpu/a/hub/* /tmp/hf-cache/ && python3 - <<'PY' || exit 1
import glob, os
from safetensors.torch import load_file, save_file
for f in glob.glob("/tmp/hf-cache/*/snapshots/*/model.fp16.safetensors"):
    sd = load_file(f)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
              os.path.join(os.path.dirname(f), "model.safetensors"), metadata={"format": "pt"})
    os.remove(f)
PY
        touch /tmp/hf-cache/.done
    fi
    for part in .gpu/a .gpu/b; do
        for c in "$part"/*/; do
            name=$(basename "$c")
            case $name in hub|wheels) continue ;; esac
            mkdir -p "$SERKIT_DATA/corpora/$name" && cp -rn "$c"* "$SERKIT_DATA/corpora/$name/"
        done
    done
    echo "speakers: $(ls $SERKIT_DATA/corpora/ravdess 2>/dev/null | wc -l)"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'lightning', lightning.__version__)"
}

gpu_sets=(--set train.num_workers=8 --set train.progress=false)

case ${1:-} in
unpack) unpack ;;
smoke)
    unpack
    t0=$(date +%s)
    python3 -m serkit.cli ablate configs/ravdess/gmp-atl-gpu.yaml --out /tmp/smoke --rows full \
        --folds 0 "${gpu_sets[@]}" --set protocol.k=4 --set protocol.val_speakers=2 \
        --set train.epochs=2 --set recipe_options.stage2.train.epochs=1 "${@:2}" 2>&1 | tee "$OUT/smoke.log"
    rc=${PIPESTATUS[0]}
    echo "smoke rc $rc wall $(( $(date +%s) - t0 )) s"
    find /tmp/smoke -name stage.json | xargs -I{} sh -c 'echo {}; cat {}; echo' > "$OUT/smoke-stages.txt" 2>/dev/null
    cp /tmp/smoke/ablation.md "$OUT/smoke.md" 2>/dev/null
    exit $rc ;;
step)
    # where a fine-tuning step's time goes (data, forward, backward, optimiser) before a long run
    unpack
    python3 bench/finetune_step.py --batch 64 --steps 10 --workers 4 2>&1 | tee "$OUT/step.md" ;;
kmeans)
    unpack
    python3 bench/kmeans.py --config configs/ravdess/baseline.yaml --layer -3 --ks 64 512 4096 \
        --backends torch sklearn --niter 25 2>&1 | tee "$OUT/kmeans.md" ;;
full)
    # Three processes of two folds each share the GPU (one process leaves it mostly idle: a whisper-base
    # step is milliseconds, the loop's Python and data loading are not); each process has its own run folder
    # /tmp/gpu-run/part-<folds> (rows and stages), so the processes never touch the same files. Here, the rows'
    # fold folders unpacked into one DIR/<row>/ make one table: serkit ablate CONFIG --out DIR --table-only.
    unpack
    t0=$(date +%s)
    python3 bench/kmeans.py --config configs/ravdess/baseline.yaml --layer -3 --ks 64 512 4096 \
        --backends torch --niter 25 2>&1 | tee "$OUT/kmeans.md"
    echo "kmeans wall $(( $(date +%s) - t0 )) s"
    t1=$(date +%s)
    mkdir -p /tmp/gpu-run
    pids=()
    for folds in ${FOLD_GROUPS:-0,1 2,3 4,5}; do
        python3 -m serkit.cli ablate configs/ravdess/gmp-atl-gpu.yaml --out "/tmp/gpu-run/part-${folds/,/_}" \
            --rows "${ROWS:-stage1,full,no_gmp}" --folds "$folds" \
            --set train.num_workers=4 --set train.progress=false "${@:2}" > "/tmp/gpu-run/log-${folds/,/_}.txt" 2>&1 &
        pids+=($!)
    done
    pack() {
        (cd /tmp/gpu-run && find . \( -name result.json -o -name stage.json -o -name metrics.csv -o -name 'ablation.*' \
            -o -name 'log-*.txt' -o -name report.md \) | sort | tar -czf "$OUT/results.tgz.tmp" -T - \
            && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz") 2>/dev/null
    }
    while :; do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 1 ] || break
        sleep 15; pack
        grep -h "test ua" /tmp/gpu-run/log-*.txt | tail -3
    done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    pack
    grep -h -A12 "| row\|^|" /tmp/gpu-run/part-*/ablation.md 2>/dev/null
    tail -n 30 /tmp/gpu-run/log-*.txt | grep -v -i warn
    echo "full rc $rc wall $(( $(date +%s) - t1 )) s"
    # MiniBatchKMeans on the CPU cores for the comparison, as long as the call has time left
    if [ "${SKLEARN:-1}" = 1 ]; then
        timeout "${SKLEARN_LIMIT:-120}" python3 bench/kmeans.py --config configs/ravdess/baseline.yaml --layer -3 \
            --ks 64 512 4096 --backends sklearn --niter 25 2>&1 | tee "$OUT/kmeans-sklearn.md"
    fi
    exit $rc ;;
*) echo "usage: $0 unpack|smoke|step|kmeans|full [--set KEY=VALUE ...]"; exit 2 ;;
esac
