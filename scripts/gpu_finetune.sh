#!/usr/bin/env bash
# Fine-tuned encoders on a GPU, in one call: RAVDESS, each fine-tuned config (configs/ravdess/<name>-ft.yaml) and
# its frozen counterpart (<name>-single-clip.yaml (single-clip-plain.yaml for the baseline)) on the same folds, plus bench/finetune_regimes.py. Results go under
# OUT (default $OUT or /tmp/out): env.txt, bench.md, summary.md (one row per run: wall time, mean UA +- std),
# logs/<config>.log and results.tgz (every run's results.json, report.md and per-fold result.json / metrics.csv).
# The run folders themselves stay in /tmp/ft-runs on the machine (a dry run: OUT/runs). Exit status 1 when a run
# failed or was stopped by the budget.
#
#   bash scripts/gpu_finetune.sh [OUT]                       # on the device machine (after pack + unpack, below)
#   SERKIT_FT_DRY=1 bash scripts/gpu_finetune.sh /tmp/ft-dry  # CPU dry run: tiny random Whisper, tiny tone corpus,
#                                                            # 1 epoch, fold 0 of 3; checks the whole pipeline
#
# Settings (environment): FT_NAMES (default "baseline mll gmp-atl hcld if-mvse": the configs that exist run, in
# this order), FT_FOLDS (e.g. 0,1; default all), FT_BUDGET_S (default 780: no run starts after it, and a run is
# stopped when it is spent; serkit cv resumes a stopped run on the next call), FT_SET (extra --set KEY=VALUE
# arguments for every run), FT_BENCH (1: run the benchmark first, default 1).
#
# The GPU image lacks soundfile, soxr and peft: `python scripts/device/pack.py` (here) packs them with the encoder
# and the corpus into .gpu/a and .gpu/b, `bash scripts/device/gmp_atl_gpu.sh unpack` (first call, carry .gpu/b)
# installs them; this script unpacks .gpu/a itself when it is there (second call, carry .gpu/a).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-${OUT:-/tmp/out}}" && cd "${1:-${OUT:-/tmp/out}}" && pwd)"
mkdir -p "$OUT/logs"
cd "$REPO"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
NAMES=${FT_NAMES:-baseline mll gmp-atl hcld if-mvse}
BUDGET=${FT_BUDGET_S:-780}
T0=$(date +%s)
read -r -a EXTRA <<< "${FT_SET:-}"

if [ "${SERKIT_FT_DRY:-0}" = 1 ]; then
    source scripts/env.sh
    PY=${PYTHON:-$VENV/bin/python}
    [ -x "$PY" ] || PY=python3
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    export SERKIT_CACHE="$OUT/dry/serkit-cache"
    CONFIGS="$OUT/dry/configs"
    BENCH_ARGS=(--clips 4 --batch 2 --steps 1 --warmup 1 --regimes frozen,lora --precisions fp32)
    RUN_SETS=(--set train.progress=false)
    FOLDS=${FT_FOLDS:-0}
    RUNS="$OUT/runs"
    # a tiny corpus of tones (6 speakers x 3 classes x 2 clips) and a tiny random Whisper; every config rewritten
    # to them: 1 epoch, 3 folds, no class set
    "$PY" - "$OUT/dry" "$NAMES" <<'PY' || exit 1
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import transformers
import yaml

from serkit.config import dump, load_config

root, names = Path(sys.argv[1]), sys.argv[2].split()
rows = []
for s in range(6):
    for emo, f in {"low": 180.0, "mid": 600.0, "high": 1800.0}.items():
        for u in range(2):
            t = np.arange(int(16000 * (0.5 + 0.1 * u))) / 16000
            rng = np.random.default_rng(100 * s + u)
            x = 0.3 * np.sin(2 * np.pi * f * (1 + 0.03 * s) * t) + 0.01 * rng.standard_normal(len(t))
            p = root / "corpus" / f"spk{s}" / f"{emo}_{u}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, x.astype(np.float32), 16000)
            rows.append({"path": str(p), "emotion": emo, "speaker": f"spk{s}", "id": f"spk{s}_{emo}_{u}"})
pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
torch.manual_seed(0)
enc = transformers.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                 decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                                 max_source_positions=1500, dropout=0.0)
transformers.WhisperForAudioClassification(enc).save_pretrained(root / "tiny-whisper")
out = root / "configs"
out.mkdir(parents=True, exist_ok=True)
for name in names:
    if not (Path("configs/ravdess") / f"{name}-ft.yaml").exists():
        continue
    for kind in ("ft", "single-clip"):
        stem = "single-clip" if (name, kind) == ("baseline", "single-clip") else f"{name}-{kind}"
        src = Path("configs/ravdess") / f"{stem}.yaml"
        if not src.exists():
            continue
        cfg = load_config(src)
        encs = cfg["encoder"] if isinstance(cfg["encoder"], list) else [cfg["encoder"]]
        for e in encs:
            e["id"] = str(root / "tiny-whisper")
            if isinstance(e.get("finetune"), dict):
                e["finetune"]["warmup_epochs"] = 0  # the one epoch trains the encoder
        cfg.update(corpus="csv", root=str(root / "table.csv"), class_set=None,
                   protocol={"name": "speaker_kfold", "k": 3, "val_speakers": 1})
        cfg["features"]["cache_dir"] = str(root / "cache")
        cfg["features"]["speaker_min_seconds"] = 0.0
        cfg["train"].update(epochs=1, min_epochs=1, batch_size=4, num_workers=0)
        for key, opts in cfg["recipe_options"].items():  # per-stage schedules and cluster counts of tiny size
            if key.startswith("stage") and isinstance(opts, dict):
                opts["train"] = {**(opts.get("train") or {}), "epochs": 1, "min_epochs": 1}
            if key == "cluster" and isinstance(opts, dict):
                opts.update(ks=[4, 8], niter=3)
        cfg["predict"].update(window_seconds=1.0, hop_seconds=0.5)
        (out / src.name).write_text(dump(cfg))
        print(f"dry config: {out / src.name}")
PY
else
    if [ -d .gpu/a/wheels ] || [ -d .gpu/b ]; then
        bash scripts/device/gmp_atl_gpu.sh unpack || exit 1
    fi
    if [ -d /tmp/site ]; then
        export SERKIT_DATA=/tmp/serkit-data HF_HUB_CACHE=/tmp/hf-cache HF_HUB_OFFLINE=1 SERKIT_CACHE=/tmp/serkit-cache
        export PYTHONPATH=/tmp/site:$REPO/src
    else
        source scripts/env.sh
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    PY=${PYTHON:-python3}
    CONFIGS=configs/ravdess
    BENCH_ARGS=(--clips 64 --batch 16 --steps 5 --warmup 2 --epochs 15 --train-items 960 --eval-items 480)
    RUN_SETS=(--set train.precision=bf16 --set train.num_workers=4 --set train.progress=false)
    FOLDS=${FT_FOLDS:-}
    RUNS=/tmp/ft-runs  # outside OUT (only files under OUT come back): a stopped run resumes on the next call
fi

{
    echo "start $(date -u +%FT%TZ); git $(git rev-parse --short HEAD 2>/dev/null || echo unknown); dry ${SERKIT_FT_DRY:-0}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
    "$PY" -c "import peft; print('peft', peft.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt"
cat "$OUT/env.txt"

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

if [ "${FT_BENCH:-1}" = 1 ] && [ -f "$CONFIGS/baseline-ft.yaml" ]; then
    timeout "$(( $(left) / 4 > 1 ? $(left) / 4 : 1 ))" "$PY" bench/finetune_regimes.py --config "$CONFIGS/baseline-ft.yaml" \
        "${BENCH_ARGS[@]}" --json "$OUT/bench.json" > "$OUT/bench.md" 2> "$OUT/logs/bench.log"
    echo "bench rc $?"; cat "$OUT/bench.md"
fi

echo "| config | rc | wall s | mean UA | std | folds |" > "$OUT/summary.md"
echo "|---|---:|---:|---:|---:|---:|" >> "$OUT/summary.md"
failed=0
for name in $NAMES; do
    if [ ! -f "$CONFIGS/$name-ft.yaml" ]; then
        echo "skip $name: no $CONFIGS/$name-ft.yaml"
        continue
    fi
    for kind in ft single-clip; do
        cfg="$CONFIGS/$name-$kind.yaml"
        if [ "$name-$kind" = baseline-single-clip ]; then cfg="$CONFIGS/single-clip-plain.yaml"; fi
        [ -f "$cfg" ] || continue
        budget=$(left)
        if [ "$budget" -le 10 ]; then
            echo "| $name-$kind | not started (budget spent) | | | | |" >> "$OUT/summary.md"
            continue
        fi
        t=$(date +%s)
        timeout "$budget" "$PY" -m serkit.cli cv "$cfg" --out "$RUNS/$name-$kind" ${FOLDS:+--folds "$FOLDS"} \
            "${RUN_SETS[@]}" "${EXTRA[@]}" > "$OUT/logs/$name-$kind.log" 2>&1
        rc=$?
        [ "$rc" = 0 ] || failed=1
        wall=$(( $(date +%s) - t ))
        row=$("$PY" - "$RUNS/$name-$kind/results.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    print(f"{r['mean'].get('ua', float('nan')):.4f} | {r['std'].get('ua', float('nan')):.4f} | {len(r['folds'])}")
except (OSError, ValueError, KeyError):
    print("- | - | 0")
PY
)
        echo "| $name-$kind | $rc | $wall | $row |" >> "$OUT/summary.md"
        echo "$name-$kind: rc $rc, $wall s"; tail -n 3 "$OUT/logs/$name-$kind.log"
    done
done
cat "$OUT/summary.md"
if [ -d "$RUNS" ]; then
    (cd "$RUNS" && find . \( -name results.json -o -name result.json -o -name report.md -o -name metrics.csv \) \
        | sort | tar -czf "$OUT/results.tgz.tmp" -T - && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz")
fi
echo "done $(date -u +%FT%TZ), $(( $(date +%s) - T0 )) s, failed $failed"
exit $failed
