"""Does a model's answer depend on the recording's gain? Each of N clips per corpus (a fixed random sample) is
predicted as read, ten times softer, and as loud as it can be without clipping (at most 10x); prints how often the
label changes. A model trained with ``encoder.level_db`` (the shipped default model) should never change.

    python bench/gain_invariance.py [--model MODEL_DIR] [--n 60]

Reads RAVDESS and EmoDB through ``configs/<corpus>/single-clip-plain.yaml`` (``SERKIT_DATA``).
"""

from __future__ import annotations

import argparse

import numpy as np
import soundfile as sf

from serkit import Recognizer
from serkit.config import load_config
from serkit.train.experiment import load_experiment_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="model folder or hub id (default: the shipped model)")
    ap.add_argument("--n", type=int, default=60, help="clips per corpus")
    args = ap.parse_args()
    rec = Recognizer.from_pretrained(args.model)
    for corpus in ("ravdess", "emodb"):
        m = load_experiment_manifest(load_config(f"configs/{corpus}/single-clip-plain.yaml"))
        softer = louder = 0
        paths = list(m.sample(n=min(args.n, len(m)), random_state=0)["path"])
        for p in paths:
            x, sr = sf.read(p, dtype="float32")
            gains = (1.0, 0.1, min(10.0, 0.99 / float(np.abs(x).max())))
            labels = [rec.predict(x * g, sr)["label"] for g in gains]
            softer += labels[1] != labels[0]
            louder += labels[2] != labels[0]
        print(f"{corpus}: the label changes for {softer} of {len(paths)} clips at 0.1x gain, for {louder} at up to "
              f"10x (peak below 0.99)", flush=True)


if __name__ == "__main__":
    main()
