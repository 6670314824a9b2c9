"""`make bench` (zoo part): every architecture of `benchmarks.zoo_models` through `sdk.export` on every target, fp32
and INT8, each cell the parity the SDK measured (or the error a user gets).

    python benchmarks/zoo.py [--models vit gru-kws] [--targets intel-cpu jetson] [--precisions fp32 int8]

INT8 runs on the host-runnable targets (Core ML converts here but runs only on macOS), calibrated on a few
generated samples. A filtered run replaces only its own cells in out/bench-zoo/results.json, and the table in
docs/zoo.md is written from every stored cell (`--no-docs`: print it only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sdk
from benchmarks.machine import describe, replace_block, where
from benchmarks.zoo_models import ZOO, ZooModel
from sdk.core.errors import ParityError, first_line

PAGE = ROOT / "docs" / "zoo.md"
START, END = "<!-- zoo: written by python benchmarks/zoo.py; do not edit -->", "<!-- /zoo -->"
TARGETS = ("android-arm64", "intel-cpu", "jetson-orin-nano", "android-litert", "apple-ane")
#: targets whose runtime runs here, so an INT8 bundle's parity can be measured
HOST_RUNNABLE = TARGETS[:4]
PRECISIONS = ("fp32", "int8")
CALIBRATION = 16


def export_cell(entry: ZooModel, device: str, precision: str, output_dir: Path) -> dict[str, Any]:
    """One export: its parity (min cosine over the outputs), delegated fraction and seconds, or the error."""
    model = entry.build()
    kwargs: dict[str, Any] = {"task": entry.task, "output_dir": output_dir}
    if precision != "fp32":
        kwargs |= {"recipe": [precision], "calibration": [entry.sample(seed) for seed in range(1, CALIBRATION + 1)]}
    cell: dict[str, Any] = {"model": entry.name, "target": device, "precision": precision}
    t0 = time.perf_counter()
    try:
        report = sdk.export(model, device, entry.sample(0), **kwargs).report
        cell |= _parity(report["parity"])
        coverage = report.get("coverage") or {}
        cell["delegated"] = coverage.get("fraction")
    except ParityError as exc:
        cell |= _parity(exc.parity) | {"error": f"ParityError: {first_line(exc)}"}
    except Exception as exc:  # the matrix records every failure, the SDK's own errors and any escaping it
        cell["error"] = f"{type(exc).__name__}: {first_line(exc)}"
    cell["seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def _parity(parity: dict[str, Any]) -> dict[str, Any]:
    cosines = [o["cosine"] for o in parity.get("outputs") or []]
    return {"passed": parity.get("passed"), "min_cosine": min(cosines) if cosines else None,
            "ran_on": parity.get("ran_on")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-zoo")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/zoo.md's table")
    args = parser.parse_args()
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"cells": []}
    results |= {"machine": describe(), "began": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for device in args.targets:
                for precision in args.precisions:
                    if precision != "fp32" and device not in HOST_RUNNABLE:
                        continue
                    cell = export_cell(ZOO[name], device, precision, Path(tmp) / f"{name}-{precision}")
                    print(json.dumps(cell), flush=True)
                    key = (name, device, precision)
                    results["cells"] = [c for c in results["cells"]
                                        if (c["model"], c["target"], c["precision"]) != key] + [cell]
                    path.write_text(json.dumps(results, indent=1) + "\n")  # a crash keeps the cells measured
    text = caption(results) + "\n\n" + table(results["cells"])
    if not args.no_docs:
        PAGE.write_text(replace_block(PAGE.read_text(), START, END, text, str(PAGE)))
    print(text)


def caption(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"Measured by `python benchmarks/zoo.py` (run by `make bench`); last run "
            f"{results['began'][:16].replace('T', ' ')} UTC, on {where(m)}, torch {m['packages']['torch']}. Each "
            "cell: the minimum cosine over the outputs vs torch fp32 on the target's runtime here, and (in "
            "brackets) the delegated fraction where the converter reports one; Core ML converts and its spec is "
            f"checked but it runs only on macOS; INT8 is calibrated on {CALIBRATION} generated samples. "
            "A numbered cell failed: its error, as the user gets it, is listed under the table.")


def _text(cell: dict[str, Any], errors: list[str]) -> str:
    cosine = cell.get("min_cosine")
    if "error" in cell:
        errors.append(cell["error"])
        return f"{cosine:.4f} fails [{len(errors)}]" if cosine is not None else f"error [{len(errors)}]"
    if cosine is None:
        return "converted (not run here)"
    delegated = cell.get("delegated")
    return f"{cosine:.4f}" + (f" ({delegated:.0%})" if delegated is not None else "")


def table(cells: list[dict[str, Any]]) -> str:
    """Model rows x (target, precision) columns, then the numbered errors."""
    by_key = {(c["model"], c["target"], c["precision"]): c for c in cells}
    columns = [(t, p) for t in TARGETS for p in PRECISIONS if p == "fp32" or t in HOST_RUNNABLE]
    columns = [col for col in columns if any(key[1:] == col for key in by_key)]
    lines = ["| model | " + " | ".join(f"{t} {p}" for t, p in columns) + " |",
             "|---|" + "---|" * len(columns)]
    errors: list[str] = []
    for name, entry in ZOO.items():
        if not any(key[0] == name for key in by_key):
            continue
        row = [_text(by_key[(name, *col)], errors) if (name, *col) in by_key else "-" for col in columns]
        lines.append(f"| {entry.title} | " + " | ".join(row) + " |")
    notes = [f"{i}. {error.replace('|', '/')}" for i, error in enumerate(errors, 1)]
    return "\n".join(lines + ([""] + notes if notes else []))


if __name__ == "__main__":
    main()
