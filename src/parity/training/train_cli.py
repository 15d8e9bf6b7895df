"""`parity train --config FILE [--nproc N]`: the training pipeline (see docs/training.md).

Hooked into `parity` with `add_commands(subparsers)`.  Exit status: 0 trained and registered,
2 a bad configuration (the message names the field), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_commands(subparsers) -> None:
    t = subparsers.add_parser(
        "train",
        help="train a model on a feature service's training set, check its ONNX export, register it with full lineage",
        description="Snapshot the data, build the training set by point-in-time join, train the MLP (seeded), evaluate on "
        "the latest events, export to ONNX and check it against PyTorch, compute the reference profile, register the version "
        "and record the tracked run.",
    )
    t.add_argument("--config", required=True, metavar="FILE", help="the training config YAML (e.g. configs/training/fraud.yaml)")
    t.add_argument("--nproc", type=int, default=1, metavar="N", help="train with N processes under torchrun (DDP on gloo; default 1)")
    t.add_argument("--db", help="metadata database URL for the registry, the run and the datasets (overrides the config)")
    t.add_argument("--artifacts", help="artifact store (overrides the config)")
    t.add_argument("--output-dir", metavar="DIR", help="where the ONNX file, profile and holdout predictions go (default $PARITY_HOME/training/...)")
    t.add_argument("--no-progress", action="store_true", help="no progress lines or bar on stderr")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from parity.training.config import load_config
    from parity.training.pipeline import summary, train

    if args.nproc < 1:
        print("parity train: --nproc must be at least 1", file=sys.stderr)
        return 2
    cfg = load_config(args.config)  # a ConfigError here: exit 2 naming the field (parity.cli.main)
    result = train(cfg, nproc=args.nproc, progress=not args.no_progress, output_dir=args.output_dir, db=args.db, artifacts=args.artifacts)
    print(json.dumps(result.to_dict(), indent=1) if args.json else summary(result))
    return 0
