"""report.html: the export report as a page a person reads, written beside report.json in every bundle.

Sections: verdict, parity and metric, latency distribution (histogram and CDF from the raw samples, with
percentiles), per-layer sensitivity and what was kept in float, delegate coverage by op, size by file, energy.
Plots are drawn with matplotlib (the `report` extra) and embedded as base64 PNG, so the page is one self-contained
file; without matplotlib the tables are still written and the page says why the plots are missing. Anything the
report could not measure is shown with its reason, never left blank.

>>> page = render({"device": "jetson-orin-nano", "format": "onnx", "recipe": ["fp32"],
...                "parity": {"passed": None, "reason": "validate=False"}}, manifest={})
>>> "validate=False" in page and page.startswith("<!doctype html>")
True
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REPORT_HTML", "render", "write", "card", "page", "table", "status", "escape", "img", "bar_figure",
           "latency_figure", "plots_unavailable_reason"]

REPORT_HTML = "report.html"
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
font-size:.92em}th{background:#f4f4f6}.pass{color:#0a7d32;font-weight:600}.fail{color:#c0262d;font-weight:600}
.note{color:#666}.plot{max-width:100%;height:auto;display:block;margin:.6em 0}
"""


def escape(value: Any) -> str:
    return html.escape(str(value))


def status(value: Any) -> str:
    if value is True or value == "pass":
        return '<span class="pass">pass</span>'
    if value is False or value == "fail":
        return '<span class="fail">FAIL</span>'
    return f'<span class="note">{escape(value)}</span>'


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return escape(value)


def plots_unavailable_reason() -> str | None:
    """Why this machine cannot draw plots (None when it can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'edge-sdk[report]'); the figures are in the tables"
    return None


def _figure(width: float = 7.5, height: float = 2.8):
    from matplotlib.figure import Figure

    # no constrained layout: it doubles the drawing cost, and every export draws these
    return Figure(figsize=(width, height), dpi=80)


def img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def latency_figure(samples_ms: Sequence[float], title: str = ""):
    """Histogram and empirical CDF of latency samples, with p50/p90/p99 marked (a matplotlib Figure)."""
    a = np.sort(np.asarray(samples_ms, dtype=np.float64))
    fig = _figure()
    hist, cdf = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.18, top=0.9 if title else 0.95, wspace=0.28)
    hist.hist(a, bins=min(40, max(5, len(a) // 4)), color="#4c72b0")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("runs")
    cdf.plot(a, np.arange(1, len(a) + 1) / len(a), color="#4c72b0")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of runs <=")
    for q, color in ((50, "#2a9d3f"), (90, "#e0a100"), (99, "#c0262d")):
        v = float(np.percentile(a, q))
        for ax in (hist, cdf):
            ax.axvline(v, color=color, linestyle="--", linewidth=1, label=f"p{q} {v:.3g} ms")
    cdf.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], xlabel: str, colors: Sequence[str] | None = None):
    fig = _figure(7.5, max(1.6, 0.32 * len(labels) + 0.9))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.22, right=0.97, bottom=min(0.45, 0.6 / fig.get_figheight()), top=0.95)
    ax.barh(range(len(labels)), values, color=colors or "#4c72b0")
    ax.set_yticks(range(len(labels)), [str(label)[:40] for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return fig


def _header(report: Mapping[str, Any]) -> str:
    verdict = report.get("verdict") or {}
    checks = verdict.get("checks") or {}
    rows = [["device", escape(f"{report.get('device')} ({report.get('device_name', '')})")],
            ["format / runtime", escape(f"{report.get('format')} / {report.get('runtime', '-')}")],
            ["recipe", escape(", ".join(report.get("recipe") or []))],
            ["verdict", status(verdict.get("status", "not judged"))]]
    rows += [[escape(f"check: {k}"), status(v)] for k, v in checks.items()]
    measured = report.get("measured_on") or {}
    rows.append(["measured on", escape(measured.get("ran_on") or f"not run: {measured.get('reason')}")])
    return f"<h1>{escape(report.get('device'))}: export report</h1>" + table(rows)


def _parity(report: Mapping[str, Any]) -> str:
    parity = report.get("parity") or {}
    out = ["<h2>Parity and metric</h2>"]
    if parity.get("passed") is None:
        out.append(f'<p class="note">not checked: {escape(parity.get("reason"))}</p>')
    else:
        out.append(f"<p>{status(parity['passed'])} on {escape(parity.get('ran_on'))}, against the fp32 model on the "
                   "bundle's reference inputs</p>")
        rows = [[escape(o.get("name")), _num(o.get("cosine"), 7), _num(o.get("max_abs_err")), _num(o.get("sqnr_db")),
                 _num(o.get("top1_agreement"))] for o in parity.get("outputs", [])]
        out.append(table(rows, ["output", "cosine", "max abs err", "SQNR dB", "top-1 agreement"]))
        if parity.get("failures"):
            out.append("<p class='fail'>" + "<br>".join(escape(f) for f in parity["failures"]) + "</p>")
    heldout = (report.get("quantization") or {}).get("heldout")
    if heldout:
        rows = [[escape(o.get("name")), _num(o.get("cosine"), 7), _num(o.get("sqnr_db")), _num(o.get("top1_agreement"))]
                for o in heldout.get("outputs", [])]
        out.append(f"<p>held-out data ({escape(heldout.get('source'))}) on {escape(heldout.get('ran_on'))}: "
                   f"{status(heldout.get('passed'))}</p>" + table(rows, ["output", "cosine", "SQNR dB", "top-1"]))
    decided = parity.get("decided_by") or []
    if decided:
        rows = [[escape(d.get("inputs")), escape(d.get("source")), escape(d.get("samples")),
                 status("not run" if d.get("passed") is None else d["passed"])]
                for d in decided]
        out.append("<p>the verdict rests on these inputs (each must pass)</p>"
                   + table(rows, ["inputs", "source", "samples", "passed"]))
    metric = report.get("metric")
    if metric:
        out.append(table([[escape(k), _num(v)] for k, v in metric.items() if not isinstance(v, (dict, list))]))
    return "".join(out)


def _latency(report: Mapping[str, Any], plots: bool) -> str:
    stats = report.get("latency_ms")
    samples = (report.get("validation") or {}).get("latency_samples_ms")
    out = ["<h2>Latency</h2>"]
    if not stats:
        measured = report.get("measured_on") or {}
        reason = measured.get("reason") or "the bundle did not run"
        return out[0] + f'<p class="note">not measured: {escape(reason)}</p>'
    where = (report.get("measured_on") or {}).get("where") or ""
    out.append(f"<p>{escape(stats.get('n'))} timed runs on {escape(where)} "
               f"({escape((report.get('measured_on') or {}).get('ran_on'))})</p>")
    out.append(table([[_num(stats.get(k)) for k in ("p50", "p90", "p99", "mean", "std", "min", "max")]],
                      ["p50 ms", "p90 ms", "p99 ms", "mean", "std", "min", "max"]))
    if samples and plots:
        out.append(img(latency_figure(samples), "latency histogram and CDF"))
    elif not samples:
        out.append('<p class="note">no raw latency samples in this report, so no distribution plot</p>')
    budget = ((report.get("verdict") or {}).get("checks") or {}).get("latency_p90_ms")
    if isinstance(budget, str):
        out.append(f'<p class="note">latency budget: {escape(budget)}</p>')
    return "".join(out)


def _sensitivity(report: Mapping[str, Any], plots: bool) -> str:
    q = report.get("quantization") or {}
    out = ["<h2>Quantization: per-layer sensitivity and what stayed in float</h2>"]
    scheme = q.get("scheme")
    if scheme:
        out.append(f"<p>{escape(scheme)}</p>")
    fallback = q.get("fallback") or {}
    kept = fallback.get("kept_float")
    if kept is not None:
        out.append(f"<p>kept in float: <b>{escape(', '.join(kept) or 'none')}</b>"
                   f" ({len(q.get('quantized_layers') or [])} layers quantized)</p>")
    worst = (q.get("sensitivity") or {}).get("worst") or []
    if not worst:
        why = (q.get("sensitivity") or {}).get("unavailable") or (
            f'the recipe quantizes no layer ({", ".join(report.get("recipe") or [])})')
        out.append(f'<p class="note">no per-layer sensitivity: {escape(why)}</p>')
        return "".join(out)
    out.append(f"<p class='note'>{escape(q['sensitivity'].get('method', ''))}</p>")
    rows = [[escape(w.get("layer")), escape(w.get("type")), _num(w.get("layer_sqnr_db")), _num(w.get("model_sqnr_db")),
             "float" if w.get("layer") in (kept or []) else "int"] for w in worst]
    out.append(table(rows, ["layer", "type", "layer SQNR dB", "model SQNR dB (this layer quantized alone)", "kept"]))
    if plots:
        labels = [w.get("layer") for w in worst]
        values = [w.get("model_sqnr_db") or 0.0 for w in worst]
        colors = ["#c0262d" if lbl in (kept or []) else "#4c72b0" for lbl in labels]
        out.append(img(bar_figure(labels, values, "model-output SQNR (dB), lower = more sensitive", colors),
                        "per-layer sensitivity"))
    return "".join(out)


def _coverage(report: Mapping[str, Any], plots: bool) -> str:
    cov = report.get("coverage") or {"unavailable": "the converter does not say"}
    out = ["<h2>Delegate coverage</h2>"]
    if "unavailable" in cov:
        return out[0] + f'<p class="note">unknown: {escape(cov["unavailable"])}</p>'
    unit = cov.get("unit", "nodes")
    out.append(f"<p>{_num(cov.get('delegated'))} of {_num(cov.get('total'))} {escape(unit)} on "
               f"{escape(cov.get('delegate'))} ({cov.get('fraction', 0):.1%})</p>")
    fell_back = cov.get("not_delegated") or {}
    reasons = cov.get("reasons") or {}
    if fell_back:
        by_count = sorted(fell_back.items(), key=lambda kv: -kv[1])
        rows = [[escape(op), escape(n), escape(reasons.get(op, ""))] for op, n in by_count]
        out.append(table(rows, ["op that fell back", escape(unit), "why"]))
        if plots:
            out.append(img(bar_figure(list(fell_back), list(fell_back.values()), f"{unit} outside the delegate"),
                            "fallback ops"))
    else:
        out.append("<p>nothing fell back</p>")
    if cov.get("details"):
        out.append(table([[escape(k), escape(v)] for k, v in cov["details"].items()]))
    return "".join(out)


def _size(report: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    art = report.get("artifact") or {}
    model = report.get("model") or {}
    out = ["<h2>Size</h2>",
           table([["model file(s)", f"{_num(art.get('size_bytes'))} B"],
                   ["vs fp32 parameters", _num(art.get("size_vs_fp32_params"))],
                   ["parameters (final)", _num(model.get("params_final", model.get("params")))],
                   ["MACs (final)", _num(model.get("macs_final", model.get("macs")))]])]
    files = manifest.get("files") or []
    if files:
        reference = manifest.get("reference")
        out.append(table([[escape(f["path"]) + (" (check data, not shipped)" if f["path"] == reference else ""),
                            escape(f["bytes"])] for f in files], ["file", "bytes"]))
    return "".join(out)


def _energy(report: Mapping[str, Any]) -> str:
    energy = report.get("energy") or {}
    if energy.get("value"):
        rows = [[escape(k), _num(v)] for k, v in energy["value"].items() if not isinstance(v, (dict, list))]
        return "<h2>Energy</h2>" + table(rows)
    return f'<h2>Energy</h2><p class="note">not measured: {escape(energy.get("reason") or "no probe")}</p>'


def render(report: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> str:
    """The whole page as one HTML string (plots inline)."""
    reason = plots_unavailable_reason()
    plots = reason is None
    body = [_header(report)]
    if reason:
        body.append(f'<p class="note">plots left out: {escape(reason)}</p>')
    body += [_parity(report), _latency(report, plots), _sensitivity(report, plots), _coverage(report, plots),
             _size(report, manifest or {}), _energy(report)]
    notes = report.get("notes") or []
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    return page(f"{report.get('device')} report", body)


def page(title: str, body: Sequence[str]) -> str:
    """A self-contained HTML page around `body` (already-escaped fragments)."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write(bundle_dir: str | Path, report: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> Path:
    """Write report.html into `bundle_dir` (called where report.json is written)."""
    path = Path(bundle_dir) / REPORT_HTML
    path.write_text(render(report, manifest), encoding="utf-8")
    return path


def card(report: Mapping[str, Any], path: str | Path) -> str:
    """A few lines of HTML for a notebook cell (`_repr_html_` of Artifact and ExportResult)."""
    parity = report.get("parity") or {}
    outputs = parity.get("outputs") or []
    cosine = min((o["cosine"] for o in outputs), default=None)
    latency = report.get("latency_ms") or {}
    size = (report.get("artifact") or {}).get("size_bytes")
    rows = [["device", escape(report.get("device", "-"))], ["format", escape(report.get("format", "-"))],
            ["recipe", escape(", ".join(report.get("recipe") or []) or "-")],
            ["size", f"{_num(size)} B" if size is not None else "-"],
            ["parity", (status(parity.get("passed")) + (f" cosine {cosine:.6f}" if cosine is not None else ""))
             if parity.get("passed") is not None else status(f"not run: {parity.get('reason')}")],
            ["latency p50 / p90", f"{_num(latency.get('p50'))} / {_num(latency.get('p90'))} ms" if latency else "-"],
            ["bundle", f"<a href='{escape(Path(path) / REPORT_HTML)}'>{escape(path)}</a>"]]
    return table(rows)
