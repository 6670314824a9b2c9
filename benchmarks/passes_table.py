"""The digits-CNN table of docs/passes.md: trains `samples/digits_cnn.py`, runs every pass with and without
distillation, and writes params, MACs and test accuracy per recipe, with the machine and date of the run.

`python -m benchmarks.passes_table` (run by `make bench`) rewrites the table in docs/passes.md. The
accuracy of a network just pruned or factorised, before distillation, follows the last bits of the trained
weights, which differ between CPUs and BLAS builds; so the page says where it was measured, and
tests/test_passes.py reruns the procedure and checks counts and invariants, not these accuracies.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import torch
from torch import nn

import samples.digits_cnn as digits
from benchmarks.machine import describe, replace_block, where
from converters.passes import apply
from converters.passes.metrics import count_macs, count_nonzero, count_params
from sdk.core.recipes import Distill, LowRank, Prune

__all__ = ["DISTILL_STEPS", "END", "PAGE", "START", "TABLE_RECIPES", "WEIGHT_DEPENDENT", "digits_table", "format_table",
           "machine_line", "quoted_table", "render_page", "trained_digits"]

PAGE = Path(__file__).resolve().parents[1] / "docs" / "passes.md"
START, END = "<!-- passes_table: written by python -m benchmarks.passes_table; do not edit -->", "<!-- /passes_table -->"
DISTILL_STEPS = 300
#: (label, recipe) rows of the table; each is also measured followed by distill:300.
TABLE_RECIPES: list[tuple[str, list]] = [
    ("none", []),
    ("prune:0.3", ["prune:0.3"]),
    ("prune:0.5", ["prune:0.5"]),
    ("prune:0.5 unstructured", [Prune(0.5, structured=False)]),
    ("lowrank:0.5", ["lowrank:0.5"]),
    ("lowrank energy=0.9", [LowRank(energy=0.9)]),
    ("depthwise", ["depthwise"]),
    ("depthwise,lowrank:0.5,prune:0.3", ["depthwise", "lowrank:0.5", "prune:0.3"]),
]
#: rows whose shapes follow the trained weights (the rank that keeps 90% of the spectrum), not the recipe alone
WEIGHT_DEPENDENT = {"lowrank energy=0.9"}


def trained_digits(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The digits CNN trained with fixed seeds, and (x_train, y_train, x_test, y_test)."""
    torch.manual_seed(seed)
    data = digits.load_data(seed=seed)
    return digits.train(digits.build(), data[0], data[1], epochs=10, seed=seed), data


def digits_table(model: nn.Module | None = None, data: tuple[torch.Tensor, ...] | None = None) -> list[dict]:
    """Params, non-zero params, MACs (one 8x8 image) and test accuracy per recipe, without and with distill:300.

    Calibration is the training images (unlabeled, batches of 64): distillation trains on the first 80%.
    """
    if model is None:
        model, data = trained_digits()
    x_train, _, x_test, y_test = data
    calibration, example = list(x_train.split(64)), (x_test[:1],)
    rows = []
    for label, recipe in TABLE_RECIPES:
        small, report = apply(model, recipe, example_inputs=example, calibration=calibration)
        distilled, distill_report = apply(model, [*recipe, Distill(steps=DISTILL_STEPS)], example_inputs=example,
                                          calibration=calibration)
        rows.append({"pass": label, "params": count_params(small), "nonzero_params": count_nonzero(small),
                     "macs": count_macs(small, example), "accuracy": digits.accuracy(small, x_test, y_test),
                     "accuracy_distilled": digits.accuracy(distilled, x_test, y_test),
                     "nonzero_params_distilled": count_nonzero(distilled),
                     "report": report, "distill_report": distill_report})
    return rows


def format_table(rows: list[dict]) -> str:
    """The table as Markdown."""
    lines = [f"| pass | params | non-zero params | MACs | accuracy | accuracy after distill:{DISTILL_STEPS} |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pass']} | {r['params']:,} | {r['nonzero_params']:,} | {r['macs']:,} | "
                     f"{100 * r['accuracy']:.1f}% | {100 * r['accuracy_distilled']:.1f}% |")
    return "\n".join(lines)


def machine_line(when: datetime.datetime, machine: dict | None = None) -> str:
    """Where and when the table was measured, read from the machine at run time."""
    m = machine or describe()
    return (f"Measured by `python -m benchmarks.passes_table` on {when:%Y-%m-%d %H:%M} UTC, on {where(m)}, "
            f"torch {m['packages']['torch']}, one thread.")


def render_page(page: str, rows: list[dict], line: str) -> str:
    """`page` with its generated block replaced by the machine line and the table."""
    return replace_block(page, START, END, f"{line}\n\n{format_table(rows)}", str(PAGE))


def quoted_table(page: str) -> tuple[str, dict[str, list[str]]]:
    """(machine line, {pass: [params, non-zero params, MACs, accuracy, accuracy distilled]}) of the page's block."""
    block = page.split(START, 1)[1].split(END, 1)[0].strip()
    line, _, table = block.partition("\n\n")
    cells = ([c.strip() for c in row.strip("|").split("|")] for row in table.splitlines()[2:])
    return line, {c[0]: c[1:] for c in cells}


def main() -> None:
    torch.set_num_threads(1)
    rows = digits_table()
    line = machine_line(datetime.datetime.now(datetime.timezone.utc))
    PAGE.write_text(render_page(PAGE.read_text(), rows, line))
    print(line + "\n\n" + format_table(rows))


if __name__ == "__main__":
    main()
