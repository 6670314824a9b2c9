"""`make bench`'s optimize section: `sdk.optimize` on pretrained EfficientNet-Lite0 (top-1 on labeled photos) and
all-MiniLM-L6-v2 (Spearman on sentence pairs) for intel-cpu, android-arm64 and android-litert, within a budget this
2-core machine affords, then the chosen recipe against the runtime's own default path and torch eager, measured
side by side (alternating, in the same run).

    python benchmarks/optimize.py [--models efficientnet-lite0 minilm-l6] [--devices intel-cpu android-arm64
                                  android-litert] [--trials 8] [--minutes 10] [--rounds 3] [--no-docs]

Writes out/bench-optimize/<model>-<device>/ (each search's study.db, optimize.json, report.html, pareto.png),
out/bench-optimize/results.json, docs/img/optimize-<model>-<device>.png and the table in docs/optimize.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sdk  # noqa: E402
from benchmarks import default_path  # noqa: E402
from benchmarks.labeled_accuracy import labeled_workload, workload_arguments  # noqa: E402
from benchmarks.machine import describe, replace_block, where  # noqa: E402
from benchmarks.measure import torch_eager  # noqa: E402
from sdk.accuracy import prepare  # noqa: E402
from sdk.agent import LocalAgent  # noqa: E402
from sdk.core.metrics import drop  # noqa: E402
from sdk.optimizer.search import Candidate, OptimizeResult, t_interval  # noqa: E402

PAGE = ROOT / "docs" / "optimize.md"
IMAGES = ROOT / "docs" / "img"
START = "<!-- optimize_bench: written by python benchmarks/optimize.py; do not edit -->"
END = "<!-- /optimize_bench -->"
FORMAT = {"intel-cpu": "openvino", "android-arm64": "executorch", "android-litert": "litert"}
GOAL = 1.5  # the bar: at least this much faster than the runtime's own default path
WARMUP, ITERATIONS = 10, 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=list(FORMAT))
    parser.add_argument("--trials", type=int, default=8, help="trials per search (the plain precisions come first)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget per search")
    parser.add_argument("--rounds", type=int, default=3, help="alternating side-by-side rounds after each search")
    args = workload_arguments(parser, ROOT / "out" / "bench-optimize", PAGE).parse_args()
    began = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, Any] = {"machine": describe(), "began": began.isoformat(), "max_drop": args.max_drop,
                               "trials": args.trials, "minutes": args.minutes, "rounds": args.rounds, "rows": []}
    for name in args.models:
        model, labeled, calibration, metric = labeled_workload(name, args.n, args.calibration)
        for device in args.devices:
            folder = args.out / f"{name}-{device}"
            shutil.rmtree(folder, ignore_errors=True)  # a fresh study: every number below is from this run
            t0 = time.perf_counter()
            res = sdk.optimize(model, device, labeled[0][:-1], eval_data=labeled, calibration=calibration,
                               metric=metric, max_drop=args.max_drop, objective="latency",
                               budget=sdk.Budget(trials=args.trials, minutes=args.minutes), output_dir=folder,
                               tolerance=sdk.Tolerance(min_cosine=0.0),  # the metric decides, not cosine parity
                               progress=lambda c, d=device: print(f"{name} {d}: {_line(c)}", flush=True))
            row = {"model": name, "device": device, "metric": metric, "search": res.to_dict(),
                   "side_by_side": side_by_side(res, model, labeled, metric, FORMAT[device], folder, args.rounds),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if (folder / "pareto.png").exists():
                shutil.copy(folder / "pareto.png", IMAGES / f"optimize-{name}-{device}.png")
            results["rows"].append(row)
            print(json.dumps(row["side_by_side"], default=str)[:800], flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = caption(results) + "\n\n" + table(results["rows"]) + "\n\n" + fronts(results["rows"])
    if not args.no_docs:
        PAGE.write_text(replace_block(PAGE.read_text(), START, END, text, str(PAGE)))
    print(text)


def _line(c: Candidate) -> str:
    if c.status != "measured":
        return f"trial {c.trial}: {c.label}: rejected: {c.reason}"
    return f"trial {c.trial}: {c.label}: drop {c.drop}, p50 {c.latency_p50_ms} ms, {c.size_mb:.2f} MB"


def side_by_side(res: OptimizeResult, model: torch.nn.Module, labeled: list[tuple], metric: str, fmt: str,
                 folder: Path, rounds: int) -> dict[str, Any]:
    """The runtime's default path (fresh process, its own default options), the best bundle and the SDK's fp32
    bundle (through the local agent) and torch eager, in alternating rounds; the default path's metric drop."""
    example = labeled[0][:-1]
    try:
        default_file = default_path.build(fmt, model, example, folder / "default-path")
    except Exception as exc:  # noqa: BLE001 - a toolchain's own default export may fail: report it, as a user sees it
        return {"default_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    check = prepare(labeled, example, metric, None)
    timing = [t.numpy() for t in example]
    agent, rows = LocalAgent(), {"default": [], "best": [], "sdk_fp32": [], "torch_eager": []}
    best = res.best or res.baseline
    default_outputs, ran_on = None, None
    for r in range(rounds):
        got = default_path.measure(fmt, default_file, timing,
                                   [[t.numpy() for t in x] for x in check.inputs] if r == 0 else [],
                                   warmup=WARMUP, iterations=ITERATIONS)
        if "error" in got:
            return {"default_error": got["error"]}
        rows["default"].append(got["latency_ms"]["p50"])
        if r == 0:
            default_outputs, ran_on = np.stack(got["outputs"]), got["ran_on"]
        for key, bundle in (("best", best.bundle), ("sdk_fp32", res.baseline.bundle)):
            rows[key].append(agent.benchmark(bundle, warmup=WARMUP, iterations=ITERATIONS)["latency_ms"]["p50"])
        rows["torch_eager"].append(torch_eager(model, example, warmup=WARMUP, iterations=ITERATIONS)
                                   ["latency_ms"]["p50"])
    fp32 = check.fp32_outputs(model)
    default_drop = drop(check.metric, fp32, default_outputs.astype(fp32.dtype), check.labels)
    ratios = [d / b for d, b in zip(rows["default"], rows["best"])]
    return {"default_ran_on": ran_on, "default_description": default_path.DESCRIPTION[fmt],
            "default_size_mb": default_path.size_bytes(default_file) / 1e6,
            "default_drop": default_drop.to_dict(), "best": best.label, "best_drop": _est(best.drop),
            "p50_ms": {k: _est(t_interval(v)) for k, v in rows.items()}, "rounds": rows,
            "speedup_vs_default": _est(t_interval(ratios)), "meets_goal": float(np.mean(ratios)) >= GOAL}


def _est(e: Any) -> dict[str, Any] | None:
    return None if e is None else {"value": e.value, "low": e.low, "high": e.high, "how": e.how}


def caption(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"Measured by `python benchmarks/optimize.py` (run by `make bench`) on "
            f"{results['began'][:16].replace('T', ' ')} UTC, on {where(m)}, load average at start "
            f"{m['load_average'][0] if m['load_average'] else 'n/a'}; each search `Budget(trials={results['trials']}, "
            f"minutes={results['minutes']:g})`, `max_drop={results['max_drop']}` (absolute) against the SDK's fp32 "
            f"export, objective latency; then {results['rounds']} alternating rounds of {ITERATIONS} timed calls "
            "each (p50 per round; intervals are 95% t-intervals over the rounds). Every runtime ran on this host "
            "(the phones and the laptop are not here).")


def _ms(d: dict[str, Any] | None) -> str:
    return "-" if not d else f"{d['value']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _drop(d: dict[str, Any] | None, pct: bool) -> str:
    if not d:
        return "-"
    lo, hi = d.get("ci_low", d.get("low")), d.get("ci_high", d.get("high"))
    f = (lambda x: f"{100 * x:+.1f}") if pct else (lambda x: f"{x:+.4f}")
    return f"{f(d['value'])} [{f(lo)}, {f(hi)}]"


def table(rows: list[dict[str, Any]]) -> str:
    """One row per (model, device): the default path, the SDK's fp32 export, the chosen recipe, the ratio."""
    lines = ["| model | device | runtime default path: p50 ms, drop | SDK fp32 p50 ms | torch eager p50 ms | "
             "chosen recipe | its p50 ms | its drop | vs default path | >= 1.5x | search |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, search, pct = r["side_by_side"], r["search"], r["metric"] == "top1"
        cost = search["cost"]
        spent = f"{cost['minutes']:.1f} min, {cost['trials_this_run']} trials"
        if "default_error" in s:
            lines.append(f"| {r['model']} | {r['device']} | failed: {s['default_error'][:120]} | - | - | - | - | - | "
                         f"- | - | {spent} |")
            continue
        p50 = s["p50_ms"]
        goal = "yes" if s["meets_goal"] else "no"
        lines.append(f"| {r['model']} | {r['device']} | {_ms(p50['default'])}, {_drop(s['default_drop'], pct)} | "
                     f"{_ms(p50['sdk_fp32'])} | {_ms(p50['torch_eager'])} | {s['best']} | {_ms(p50['best'])} | "
                     f"{_drop(s['best_drop'], pct)} | {_ms(s['speedup_vs_default']).replace(' [', 'x [')} | {goal} | "
                     f"{spent} |")
    metric_note = ("Drops are in points of top-1 (EfficientNet-Lite0, n labeled crops) or of Spearman's rho "
                   "(MiniLM, 102 pairs), fp32 minus artifact, with paired-bootstrap 95% intervals; the default "
                   "path's drop is against torch fp32, the chosen recipe's against the SDK's fp32 export.")
    return "\n".join(lines) + "\n\n" + metric_note


def fronts(rows: list[dict[str, Any]]) -> str:
    """Each search's candidates (the front marked) and its plot: what was tried and why the chosen one won."""
    parts = []
    for r in rows:
        search, pct = r["search"], r["metric"] == "top1"
        front = set(search["pareto"])
        items = []
        for c in [search["baseline"], *search["candidates"]]:
            label = ", ".join(c["recipe"]) + (f" ({len(c['kept_float'])} layers float)" if c.get("kept_float") else "")
            if c["status"] != "measured":
                items.append(f"{label}: rejected ({(c.get('reason') or '')[:140]})")
                continue
            mark = " **front**" if c["trial"] in front else ""
            items.append(f"{label}: p50 {_ms(c['latency_p50_ms'])} ms, drop {_drop(c['drop'], pct)}{mark}")
        image = f"img/optimize-{r['model']}-{r['device']}.png"
        why = "" if search["best"] else f" No recipe chosen: {search['why'][:300]}"
        parts.append(f"**{r['model']} on {r['device']}**: " + "; ".join(items) + f".{why}\n\n"
                     f"![{r['model']} on {r['device']}: accuracy drop vs latency]({image})")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
