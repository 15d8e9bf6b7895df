"""`parity gate`: run the promotion gate on two prediction files (see docs/gate.md).

    parity gate --champion champ.parquet --challenger chall.parquet --metric roc_auc --margin 0.01

Each file (Parquet or CSV) has one row per holdout example, in the same order, with columns
`y_true` and `score`.  Prints the decision (or the evidence with --json); exit 0 when the challenger
passes, 1 when it does not.  To be hooked into `parity` with `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from parity.errors import InvalidInput


def add_commands(subparsers) -> None:
    g = subparsers.add_parser(
        "gate",
        help="the promotion gate: compare a challenger's holdout predictions with the champion's (exit 0 pass, 1 fail)",
        description="Compare two models' predictions on the same holdout with a paired test (DeLong for roc_auc, "
        "McNemar for accuracy, a paired bootstrap otherwise) and decide whether the challenger may be promoted.",
    )
    g.add_argument("--challenger", type=Path, required=True, metavar="FILE", help="the challenger's predictions: Parquet or CSV with columns y_true, score")
    g.add_argument("--champion", type=Path, metavar="FILE", help="the champion's predictions on the same rows (leave out when there is no champion)")
    g.add_argument("--config", type=Path, metavar="YAML", help="a YAML file with the gate's settings (in its `gate:` section unless --section)")
    g.add_argument("--section", default="gate", help="the YAML section holding the settings (default: gate; '' for the whole file)")
    g.add_argument("--metric", help="roc_auc, accuracy, rmse, mse, mae, log_loss, brier (default roc_auc)")
    g.add_argument("--margin", type=float, help="how much worse the challenger may be (default 0.01)")
    g.add_argument("--alpha", type=float, help="one-sided level of the tests (default 0.05)")
    g.add_argument("--require-superiority", action="store_true", default=None, help="also require the challenger to be significantly better")
    g.add_argument("--seed", type=int, help="the bootstrap's random state (default 0)")
    g.add_argument("--n-resamples", type=int, help="bootstrap resamples (default 9999)")
    g.add_argument("--json", action="store_true", help="print the evidence (what the audit log stores) as JSON")
    g.add_argument("--evidence-out", type=Path, metavar="FILE", help="also write the evidence JSON here (for `parity registry alias set --evidence @FILE`)")
    g.set_defaults(func=_gate)


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, score) from a Parquet or CSV file."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(path)
        else:
            raise InvalidInput(f"{path}: use a .parquet or .csv file")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except InvalidInput:
        raise
    except Exception as e:  # noqa: BLE001 - a file pandas cannot read is bad input
        raise InvalidInput(f"{path}: cannot read it ({e})") from None
    missing = [c for c in ("y_true", "score") if c not in df.columns]
    if missing:
        raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")
    return df["y_true"].to_numpy(), df["score"].to_numpy()


def _gate(args: argparse.Namespace) -> int:
    from parity.training.gate import GateConfig, evaluate_gate

    settings: dict = {}
    if args.config is not None:
        settings = GateConfig.from_file(args.config, section=args.section or None).to_dict()
    for key in ("metric", "margin", "alpha", "require_superiority", "seed", "n_resamples"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.metric is not None and args.config is not None:
        settings.pop("higher_is_better", None)  # the metric changed: its direction comes with it
    config = GateConfig.from_dict(settings, source="parity gate")
    y, challenger = read_predictions(args.challenger)
    champion = None
    if args.champion is not None:
        y_champ, champion = read_predictions(args.champion)
        if len(y_champ) != len(y) or not np.array_equal(y_champ, y):
            raise InvalidInput(
                f"{args.champion} and {args.challenger} have different y_true columns: score both models on the same holdout rows, in the same order"
            )
    result = evaluate_gate(config, y, champion, challenger)
    text = json.dumps(result.evidence, indent=2, sort_keys=True, allow_nan=False)
    if args.evidence_out is not None:
        args.evidence_out.write_text(text + "\n")
    print(text if args.json else result.decision)
    return 0 if result.passed else 1
