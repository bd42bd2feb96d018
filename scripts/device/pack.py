"""Pack what a GPU machine of the ``device`` tool needs into ``.gpu/`` (ignored by git), in two parts.

The device tool sends at most 64 MiB per call and nothing outside the repository, so the offline material
travels in two calls to the same warm machine:

* ``.gpu/a``: the encoder's hub-cache snapshot with its weights stored as float16 (lossless here: the offline
  weights are fp16 values stored as fp32), the wheels the GPU image lacks, and the first ``--split`` speakers
  of the corpus;
* ``.gpu/b``: the rest of the corpus.

``scripts/device/gmp_atl_gpu.sh`` unpacks both on the machine (outside the repository, so they stay there
between calls). Nothing here is committed: the material comes from ``$SERKIT_DATA`` and ``$HF_HUB_CACHE``.

    python scripts/device/pack.py [--model openai/whisper-base] [--corpus ravdess] [--split 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

WHEELS = ["soundfile==0.14.0", "cffi==2.0.0", "pycparser==2.23", "soxr==1.1.0",
          # encoder.finetune mode lora (scripts/gpu_finetune.sh)
          "peft==0.21.2", "accelerate==1.16.0", "psutil==7.2.2"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="openai/whisper-base")
    ap.add_argument("--corpus", default="ravdess")
    ap.add_argument("--split", type=int, default=8, help="speaker folders in part a")
    ap.add_argument("--out", default=".gpu")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    a, b = out / "a", out / "b"
    hub = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + args.model.replace("/", "--"))
    rev = (hub / "refs" / "main").read_text().strip()
    snap = hub / "snapshots" / rev
    dst = a / "hub" / hub.name
    (dst / "refs").mkdir(parents=True)
    (dst / "refs" / "main").write_text(rev)
    (dst / "snapshots" / rev).mkdir(parents=True)
    for f in snap.iterdir():
        if f.name == "model.safetensors":
            sd = load_file(str(f))
            half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
            back = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
            lossy = [k for k in sd if sd[k].is_floating_point() and not torch.equal(sd[k], back[k])]
            if lossy:
                sys.exit(f"pack: {len(lossy)} tensors of {f} are not exact in float16 (e.g. {lossy[0]})")
            save_file(half, str(dst / "snapshots" / rev / "model.fp16.safetensors"))
        else:
            shutil.copy(f, dst / "snapshots" / rev / f.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "-d", str(a / "wheels"), *WHEELS], check=True)
    root = Path(os.environ.get("SERKIT_DATA", "../shared")) / "corpora" / args.corpus
    speakers = sorted(p for p in root.iterdir() if p.is_dir())
    for i, spk in enumerate(speakers):
        shutil.copytree(spk, (a if i < args.split else b) / args.corpus / spk.name)
    for part in (a, b):
        size = sum(f.stat().st_size for f in part.rglob("*") if f.is_file())
        print(f"{part}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
