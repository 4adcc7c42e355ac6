"""python -m train.ablation: what each trick of the default recipe adds, on the same seed and budget.

Each variant is the default ``edge_airbench`` recipe with one trick taken out, trained for the same
number of epochs with the same seed; two more rows repeat the seed notebook's comparison (its
baseline CNN and plain recipe, with and without augmentation). The table is written to
``OUT/<dataset>/ablation.{json,md}``; each variant's run folder sits beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from runtime.cli import fail
from train.quiet_tensorflow import import_tensorflow_quietly

import_tensorflow_quietly()

from train.batches import Augment  # noqa: E402
from train.datasets import load_dataset  # noqa: E402
from train.errors import DataError  # noqa: E402

log = logging.getLogger("train.ablation")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "runs" / "ablation"


def variants() -> dict[str, tuple[str, dict]]:
    """name -> (architecture, changes to its recipe); the first is the full recipe."""
    from train.fit import RECIPES

    full = RECIPES["edge_airbench"]
    return {
        "full recipe": ("edge_airbench", {}),
        "- patch whitening (first layer trained)": ("edge_airbench", {"whiten": False}),
        "- identity init": ("edge_airbench", {"identity_init": False}),
        "- lookahead": ("edge_airbench", {"lookahead": False}),
        "- fast BatchNorm biases (x64 lr)": ("edge_airbench", {"norm_bias_lr_scale": 1.0}),
        "- alternating flips (random flips)": (
            "edge_airbench",
            {"augment": replace(full.augment, alternate_flip=False)},
        ),
        "- label smoothing (0.2 -> 0)": ("edge_airbench", {"label_smoothing": 0.0}),
        "- translation and Cutout (flips only)": (
            "edge_airbench",
            {"augment": Augment(flip=True, alternate_flip=True)},
        ),
        "seed notebook CNN, no augmentation": ("baseline", {}),
        "seed notebook CNN, translation and flips": ("baseline", {"augment": Augment(translate=2, flip=True)}),
    }


def run_variant(name: str, arch: str, changes: dict, dataset, epochs: int, out: Path, seed: int) -> dict:
    from train.fit import RECIPES, TrainConfig, train

    recipe = replace(RECIPES[arch], epochs=epochs, **changes)
    folder = out / dataset.name / name.strip("- ").replace(" ", "_").replace("/", "_")[:60]
    started = time.perf_counter()
    metrics = train(TrainConfig(dataset, arch, folder, epochs, seed=seed, recipe_override=recipe))
    return {
        "variant": name,
        "arch": arch,
        "test_accuracy": metrics["test_accuracy"],
        "epochs": epochs,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "train_time_s": metrics["wall_time_s"],
        "params": metrics["params"],
    }


def table(rows: list[dict]) -> str:
    full = rows[0]["test_accuracy"] if rows and rows[0]["variant"] == "full recipe" else None
    lines = ["| variant | epochs | test accuracy | vs full recipe | training time |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        delta = (
            f"{100 * (row['test_accuracy'] - full):+.2f} pp" if full is not None and row["arch"] != "baseline" else "–"
        )
        lines.append(
            f"| {row['variant']} | {row['epochs']} | {100 * row['test_accuracy']:.2f}% | {delta} "
            f"| {row['train_time_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    names = list(variants())
    parser = argparse.ArgumentParser(
        prog="python -m train.ablation",
        description="Train the default recipe and variants with one trick removed each, on the same seed and "
        "epochs, and tabulate test accuracy and training time.",
    )
    parser.add_argument("--dataset", default="cifar10", help="a registered dataset or image-folder path")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every variant (default: 6)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", help=f"comma-separated variant numbers, 1..{len(names)} (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: runs/ablation/)")
    parser.add_argument("--data-dir", help="where the datasets are (default: $EDGEPACK_DATA_DIR)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    try:
        chosen = [names[int(i) - 1] for i in args.only.split(",")] if args.only else names
    except (ValueError, IndexError):
        parser.error(f"--only takes numbers from 1 to {len(names)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
    except DataError as exc:
        return fail(f"{exc}")
    report = args.out / dataset.name / "ablation.json"
    rows = json.loads(report.read_text()) if report.is_file() else []
    try:
        for name in chosen:
            arch, changes = variants()[name]
            row = run_variant(name, arch, changes, dataset, args.epochs, args.out, args.seed)
            rows = [r for r in rows if r["variant"] != name] + [row]
            rows.sort(key=lambda r: names.index(r["variant"]))
            report.write_text(json.dumps(rows, indent=2) + "\n")
            report.with_suffix(".md").write_text(table(rows))
            print(f"{name}: {100 * row['test_accuracy']:.2f}% in {row['train_time_s']:.0f} s")
    except KeyboardInterrupt:
        print("interrupted: finished variants are in " + str(report), file=sys.stderr)
        return 130
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
