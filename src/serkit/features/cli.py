"""The ``serkit extract`` command: a manifest's encoder features into a feature store (one process or ``torchrun``).

:mod:`serkit.cli` registers it through :func:`add_extract_parser`.
"""

from __future__ import annotations

import argparse

from serkit.features.extraction import ExtractReport, extract_to_cache


def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serkit extract MANIFEST --encoder ID --layers SPEC --out DIR ...`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "extract",
        help="extract encoder features of a manifest into a feature store",
        description=extract_to_cache.__doc__.split("\n")[0],
    )
    p.add_argument("manifest", help="manifest CSV or Parquet (columns id, path, ...)")
    p.add_argument(
        "--encoder", required=True, help="alias (whisper-base, wavlm-large, fbank-80, ...), hub id or folder"
    )
    p.add_argument("--layers", default="all", help="layer spec: -1, 3, 0,2,4, 2:5, all (default: all)")
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument(
        "--mode",
        choices=("native", "padded"),
        default="native",
        help="native: own length (default); padded: Whisper's stock 30 s input",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="encoder precision (default auto: bf16 where the CPU has AMX / AVX512-bf16 or the GPU supports it)",
    )
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio per batch, seconds")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="longer files are chunked")
    p.add_argument("--overlap-seconds", type=float, default=1.0, help="overlap between chunks")
    p.add_argument("--strict", action="store_true", help="stop at the first bad audio file")
    p.add_argument(
        "--overwrite", action="store_true", help="reuse a folder holding features of another encoder"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=extract_main)
    return p


def extract_main(args: argparse.Namespace) -> int:
    """Run ``serkit extract`` from parsed arguments; exit code 0, or 1 when some files failed.

    Under ``torchrun`` the ranks split the manifest (gloo on CPU, nccl on GPU: ``--device cuda`` gives rank r
    ``cuda:LOCAL_RANK``)."""
    from serkit.distributed import barrier, init_from_env, shutdown

    rank, _, device = init_from_env(args.device)
    try:
        report = _extract(args, device)
        barrier()  # torchrun stops the other ranks as soon as one exits non-zero: finish together
    finally:
        shutdown()
    return 1 if report.failures and rank == 0 else 0  # rank 0 reports the whole run's failures


def _extract(args: argparse.Namespace, device: str) -> ExtractReport:
    return extract_to_cache(
        args.manifest,
        args.encoder,
        args.layers,
        args.out,
        mode=args.mode,
        device=device,
        precision=args.precision,
        batch_seconds=args.batch_seconds,
        chunk_seconds=args.chunk_seconds,
        overlap_seconds=args.overlap_seconds,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
