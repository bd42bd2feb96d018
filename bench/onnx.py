"""Benchmark: a model's torch Recognizer against its exported ONNX graph run by onnxruntime, on real clips.

Both score the same clips (read once, before timing) through the same ``Recognizer.predict`` API; the figures
are clips per second and audio seconds per second (wall time) and CPU seconds per clip (process time, all
threads: fairer than wall time on a shared machine) after one warm-up clip, plus the largest difference of the
class probabilities between the two backends. The graph is exported first when the model folder has none.

    python bench/onnx.py MODEL --audio '../shared/corpora/emodb/wav/*.flac' --limit 100
    python bench/onnx.py MODEL --audio '...' --threads 1      # torch and onnxruntime intra-op threads
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _env() -> None:
    if "HF_HUB_CACHE" not in os.environ and (SHARED / "hf-cache").is_dir():
        os.environ["HF_HUB_CACHE"] = str(SHARED / "hf-cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _time(rec, signals) -> tuple[float, float, list[dict]]:
    from serkit.constants import SAMPLE_RATE

    rec.predict(signals[0], SAMPLE_RATE)  # warm-up (lazy encoder load, allocator, onnxruntime arenas)
    t0, c0 = time.perf_counter(), time.process_time()
    out = [rec.predict(x, SAMPLE_RATE) for x in signals]
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder from `serkit train`")
    p.add_argument("--audio", required=True, help="glob of audio files")
    p.add_argument("--limit", type=int, default=100, help="first N files (sorted)")
    p.add_argument("--threads", type=int, help="intra-op threads of both (default: each library's own)")
    args = p.parse_args(argv)
    _env()
    import numpy as np
    import torch

    from serkit.audio import read_audio
    from serkit.constants import SAMPLE_RATE
    from serkit.export import export_onnx
    from serkit.inference import Recognizer
    from serkit.inference.onnx import OnnxRecognizer
    from serkit.model_folder import ONNX_FILE

    files = sorted(glob.glob(args.audio))[: args.limit]
    if not files:
        print(f"no files match {args.audio!r}", file=sys.stderr)
        return 2
    signals = [read_audio(f) for f in files]
    seconds = sum(len(x) for x in signals) / SAMPLE_RATE
    if not (Path(args.model) / ONNX_FILE).exists():
        export_onnx(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_rec = Recognizer.from_pretrained(args.model, device="cpu")
    onnx_rec = OnnxRecognizer.from_folder(args.model, threads=args.threads)
    t_torch, c_torch, a = _time(torch_rec, signals)
    t_onnx, c_onnx, b = _time(onnx_rec, signals)
    diff = max(abs(x["probabilities"][c] - y["probabilities"][c]) for x, y in zip(a, b, strict=True)
               for c in x["probabilities"]) if "probabilities" in a[0] else float("nan")
    same = sum(x.get("label") == y.get("label") for x, y in zip(a, b, strict=True))
    import onnxruntime as ort

    print(f"{len(files)} clips, {seconds:.0f} s of audio (mean {seconds / len(files):.1f} s); model {args.model}")
    n = len(files)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads): {t_torch:.1f} s, {n / t_torch:.2f} "
          f"clips/s, {seconds / t_torch:.1f} audio s/s, {c_torch / n:.3f} CPU s per clip")
    print(f"onnxruntime {ort.__version__} ({args.threads or 'default'} threads): {t_onnx:.1f} s, {n / t_onnx:.2f} "
          f"clips/s, {seconds / t_onnx:.1f} audio s/s, {c_onnx / n:.3f} CPU s per clip")
    print(f"speed-up {t_torch / t_onnx:.2f}x (wall), {c_torch / c_onnx:.2f}x (CPU); "
          f"max |probability difference| {diff:.1e} (probabilities rounded to "
          f"1e-4 in results); same label on {same}/{len(files)} clips")
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
