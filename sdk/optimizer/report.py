"""What a person reads after `sdk.optimize`: optimize.json, pareto.png (accuracy drop vs latency, marker area
by size) and report.html (the plot and one table row per candidate), all in the search's output folder."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdk.optimizer.search import Candidate, OptimizeResult

__all__ = ["COLUMNS", "table_rows", "write_report"]

COLUMNS = ("trial", "recipe", "drop [95% CI]", "p50 ms [95% CI]", "p90 ms", "vs fp32", "size MB", "memory MB",
           "energy mJ", "delegated", "status")


def table_rows(res: OptimizeResult) -> list[list[str]]:
    """One row of text per candidate, the fp32 baseline first; the best and the Pareto front are marked."""

    def row(c: Candidate) -> list[str]:
        if c.status != "measured":
            return [str(c.trial), ", ".join(c.recipe), *["-"] * 8, f"rejected: {c.reason}"]
        speed = res.speedup(c)
        tags = ["best" if c is res.best else "", "pareto" if any(c is p for p in res.pareto) else "",
                "baseline" if c.trial is None else "", f"run {c.run}" if c.run != res.baseline.run else ""]
        status = ", ".join([*(t for t in tags if t), *c.violations]) or "ok"
        return ["fp32" if c.trial is None else str(c.trial), c.label,
                f"{c.drop.value:+.4f} [{c.drop.low:+.3f}, {c.drop.high:+.3f}]",
                str(c.latency_p50_ms), f"{c.latency_p90_ms.value:.3f}", f"{speed:.2f}x" if speed else "-",
                f"{c.size_mb:.3f}", f"{c.memory_mb:.0f}", _text(c.energy_mj), _text(c.delegated), status]
    return [row(res.baseline), *(row(c) for c in res.candidates)]


def _text(value: object) -> str:
    """A number, or "n/a" with the first clause of why (the JSON keeps the whole reason)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "n/a" if value is None else f"n/a ({str(getattr(value, 'reason', value)).split(':')[0]})"


def _plot(res: OptimizeResult, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    measured = [c for c in [res.baseline, *res.candidates] if c.status == "measured"]
    front = {id(c) for c in res.pareto}
    largest = max(x.size_mb for x in measured)
    for c in measured:
        on_front = id(c) in front
        ax.scatter(c.latency_p50_ms.value, 100 * c.drop.value, s=30 + 400 * c.size_mb / largest,
                   color="tab:red" if on_front else "tab:gray", alpha=0.7, edgecolors="black")
        mixed = f" +{len(c.kept_float)} float" if c.kept_float else ""
        ax.annotate(",".join(c.recipe) + mixed, (c.latency_p50_ms.value, 100 * c.drop.value), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(100 * res.max_drop, color="tab:blue", linestyle="--", linewidth=1, label=f"max_drop {res.max_drop:.2%}")
    ax.set_xlabel("latency p50 (ms, on the agent)")
    ax.set_ylabel(f"{res.metric} drop vs fp32 export (points)")
    ax.set_title(f"{res.space.device}: candidates (red: Pareto front; area: size)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res: OptimizeResult) -> Path:
    """Write optimize.json, pareto.png and report.html into `res.output_dir`; returns the HTML's path."""
    out = res.output_dir
    (out / "optimize.json").write_text(json.dumps(res.to_dict(), indent=2, default=str))
    _plot(res, out / "pareto.png")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in table_rows(res))
    best = (f"<p>Best ({res.objective}): <b>{html.escape(res.best.label)}</b></p>" if res.best
            else f"<p>No recipe chosen: {html.escape(res.why or '')}</p>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in res.space.notes)
    cost = res.cost
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edge-sdk optimize: {res.space.device}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>sdk.optimize on {html.escape(res.space.device)}</h1>{best}
<p>Metric {html.escape(res.metric)}, max drop {res.max_drop:.2%} against the runtime's plain fp32 export measured in
the same run; constraints {html.escape(json.dumps(res.constraints))}. Search cost: {cost.minutes} min,
{cost.device_s} s on the device, {cost.trials_this_run} trials this run ({cost.trials_in_study} in the study),
{cost.rejected_before_device} rejected before device time.</p>
<img src="pareto.png" alt="accuracy drop vs latency"><h2>Candidates</h2><table><tr>{head}</tr>{body}</table>
<h2>Search space</h2><ul>{notes}</ul></body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
