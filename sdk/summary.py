"""One line per device for an export to several devices, and the run's summary.json / summary.html.

A line fits 80 columns; a long reason (a stand-in runtime, an error) is printed once below the lines and referred
to by number, so eight devices that ran on the same stand-in share one note.

>>> o = DeviceOutcome(device="jetson-orin-nano", format="onnx", ok=True, size_bytes=3_500_000, parity_passed=True,
...                   min_cosine=0.9999991, latency_p50_ms=1.234)
>>> lines, notes = compact_lines([o])
>>> lines[0]
'ok   jetson-orin-nano  onnx         3.50 MB  pass 0.999999        1.23 ms'
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk import report_html

__all__ = ["DeviceOutcome", "compact_lines", "fmt_size", "write_summary", "SUMMARY_JSON", "SUMMARY_HTML", "WIDTH"]

SUMMARY_JSON = "summary.json"
SUMMARY_HTML = "summary.html"
WIDTH = 80


@dataclass(frozen=True)
class DeviceOutcome:
    """What one device's export came to: a bundle with its figures, or the error."""

    device: str
    format: str
    ok: bool
    size_bytes: int | None = None
    parity_passed: bool | None = None
    min_cosine: float | None = None
    latency_p50_ms: float | None = None
    measured_where: str | None = None
    verdict: str | None = None
    bundle: str | None = None
    note: str | None = None

    @classmethod
    def from_report(cls, report: Mapping[str, Any], bundle: str | Path) -> "DeviceOutcome":
        parity = report.get("parity") or {}
        outputs = parity.get("outputs") or []
        measured = report.get("measured_on") or {}
        latency = report.get("latency_ms") or {}
        ran_on = measured.get("ran_on")
        note = f"ran on {ran_on}" if ran_on else f"not run: {measured.get('reason') or parity.get('reason')}"
        return cls(device=report["device"], format=report["format"], ok=True,
                   size_bytes=(report.get("artifact") or {}).get("size_bytes"), parity_passed=parity.get("passed"),
                   min_cosine=min((o["cosine"] for o in outputs), default=None), latency_p50_ms=latency.get("p50"),
                   measured_where=measured.get("mode"), verdict=(report.get("verdict") or {}).get("status"),
                   bundle=str(bundle), note=note)

    @classmethod
    def from_error(cls, device: str, fmt: str, error: BaseException) -> "DeviceOutcome":
        return cls(device=device, format=fmt, ok=False, note=f"{type(error).__name__}: {error}")


def fmt_size(n: int | None) -> str:
    """Bytes as kB or MB, for people."""
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _parity(o: DeviceOutcome) -> str:
    if not o.ok:
        return "export failed"
    if o.parity_passed is None:
        return "not run"
    word = "pass" if o.parity_passed else "FAIL"
    return f"{word} {o.min_cosine:.6f}" if o.min_cosine is not None else word


def compact_lines(outcomes: Sequence[DeviceOutcome]) -> tuple[list[str], list[str]]:
    """(one line per device, the numbered notes they refer to), every line at most 80 columns."""
    notes: list[str] = []
    lines = []
    for o in outcomes:
        mark = "ok" if o.ok and o.parity_passed is not False else "FAIL"
        latency = f"{o.latency_p50_ms:8.3g} ms" if o.latency_p50_ms is not None else f"{'-':>11}"
        line = f"{mark:<4} {o.device[:17]:<17} {o.format[:10]:<10} {fmt_size(o.size_bytes):>9}  {_parity(o):<16} {latency}"
        if o.note:
            if o.note not in notes:
                notes.append(o.note)
            line += f" [{notes.index(o.note) + 1}]"
        lines.append(line[:WIDTH])
    return lines, notes


def _summary_html(outcomes: Sequence[DeviceOutcome], notes: Sequence[str], out_dir: Path, title: str) -> str:
    e = report_html.escape
    rows = []
    for o in outcomes:
        link = "-"
        if o.bundle:
            rel = Path(o.bundle).resolve().relative_to(out_dir.resolve()) if Path(o.bundle).resolve().is_relative_to(
                out_dir.resolve()) else Path(o.bundle)
            link = f"<a href='{e(rel.as_posix())}/{report_html.REPORT_HTML}'>{e(rel.as_posix())}</a>"
        note = f"[{notes.index(o.note) + 1}]" if o.note in notes else ""
        rows.append([e(o.device), e(o.format), report_html.status(o.ok and o.parity_passed is not False),
                     e(fmt_size(o.size_bytes)), e(_parity(o)),
                     e(f"{o.latency_p50_ms:.3f} ms ({o.measured_where})" if o.latency_p50_ms is not None else "-"),
                     e(o.verdict or "-"), link, note])
    body = [f"<h1>{e(title)}</h1>",
            report_html.table(rows, ["device", "format", "ok", "size", "parity (min cosine)", "latency p50",
                                     "verdict", "report", "note"])]
    measured = [o for o in outcomes if o.latency_p50_ms is not None]
    reason = report_html.plots_unavailable_reason()
    if measured and reason is None:
        fig = report_html.bar_figure([o.device for o in measured], [o.latency_p50_ms for o in measured],
                                     "latency p50 (ms), where each bundle ran (see notes)")
        body.append(report_html.img(fig, "latency p50 by device"))
    elif measured:
        body.append(f"<p class='note'>plots left out: {e(reason)}</p>")
    body.append("<h2>Notes</h2><ol>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ol>")
    return report_html.page(title, body)


def write_summary(out_dir: str | Path, outcomes: Sequence[DeviceOutcome], title: str) -> tuple[Path, Path]:
    """Write `<out_dir>/summary.json` and `<out_dir>/summary.html`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, notes = compact_lines(outcomes)
    js = out_dir / SUMMARY_JSON
    js.write_text(json.dumps({"title": title, "devices": [dataclasses.asdict(o) for o in outcomes], "notes": notes},
                             indent=2) + "\n")
    page = out_dir / SUMMARY_HTML
    page.write_text(_summary_html(outcomes, notes, out_dir, title), encoding="utf-8")
    return js, page
