"""report.html in every bundle and out/summary.html for several devices, rendered in a real headless Chromium.

Chromium is Debian's `chromium` package; the session fixture installs it with apt-get when it is missing.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdk
from sdk.core.errors import UnknownDeviceError
from sdk.summary import DeviceOutcome, compact_lines, write_summary

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOT_BLUE = np.array([0x4C, 0x72, 0xB0])  # the bars' and histogram's colour in sdk/report_html.py


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900,
                       check=False, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        found = shutil.which("chromium")
    assert found, "Debian's chromium is needed to render report.html: apt-get install chromium"
    return found


def _render(chromium: str, page: Path, tmp: Path, height: int) -> tuple[np.ndarray, list[int]]:
    """(screenshot pixels, naturalWidth of every <img> after load) of `page` in headless Chromium."""
    probe = tmp / f"probe-{page.parent.name}.html"
    script = ("<script>addEventListener('load',()=>document.body.setAttribute('data-widths',"
              "JSON.stringify([...document.images].map(i=>i.naturalWidth))))</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    widths = json.loads(re.search(r'data-widths="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    shot = tmp / f"{page.parent.name}-{page.stem}.png"
    subprocess.run([*common, f"--window-size=1000,{height}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(shot).convert("RGB")).astype(int), widths


def _plot_pixels(pixels: np.ndarray) -> int:
    return int((np.abs(pixels - PLOT_BLUE).sum(axis=2) < 30).sum())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    calibration = [(torch.randn(1, 3, 32, 32),) for _ in range(16)]
    res = sdk.export(model, "android-arm64", calibration[0], recipe="int8", calibration=calibration,
                     tolerance=sdk.Tolerance(min_cosine=0.99), output_dir=out, sensitivity=True)
    return out, res


def test_every_bundle_has_report_html_and_raw_latency_samples(exported):
    _, res = exported
    assert (res.artifact.path / "report.html").is_file()
    samples = res.report["validation"]["latency_samples_ms"]
    assert len(samples) == res.report["latency_ms"]["n"] and all(s > 0 for s in samples)
    assert np.isclose(np.percentile(samples, 50), res.report["latency_ms"]["p50"], rtol=0.05)
    res.artifact.verify()  # report.html sits beside report.json, outside the manifest's checked files


def test_report_html_renders_with_its_plots_in_chromium(exported, chromium, tmp_path):
    _, res = exported
    page = (res.artifact.path / "report.html").read_text()
    for section in ("Parity and metric", "Latency", "per-layer sensitivity", "kept in float", "Delegate coverage",
                    "Size", "Energy", "not measured: no power probe"):
        assert section in page, section
    pixels, widths = _render(chromium, res.artifact.path / "report.html", tmp_path, 2400)
    assert len(widths) == 2 and all(w > 0 for w in widths), widths  # latency, per-layer sensitivity
    assert pixels.std() > 20, "the screenshot is blank"
    assert _plot_pixels(pixels) > 5000, "the plots are not on the screenshot"


def test_summary_for_several_devices_renders_and_links_each_report(exported, chromium, tmp_path):
    out, res = exported
    outcomes = [DeviceOutcome.from_report(res.report, res.artifact.path),
                DeviceOutcome.from_error("jetson-orin-nano", "onnx", UnknownDeviceError("jetsn", ["jetson"]))]
    js, html_path = write_summary(out, outcomes, "export of a test model")
    data = json.loads(js.read_text())
    assert [d["device"] for d in data["devices"]] == ["android-arm64", "jetson-orin-nano"]
    assert data["devices"][1]["ok"] is False and "Did you mean" in data["notes"][-1]
    links = re.findall(r"href='([^']+)'", html_path.read_text())
    assert links and all((out / link).is_file() for link in links)
    pixels, widths = _render(chromium, html_path, tmp_path, 900)
    assert widths and all(w > 0 for w in widths)
    assert _plot_pixels(pixels) > 1000


def test_compact_lines_fit_80_columns_and_share_notes():
    stand_in = "ran on onnxruntime CPU, a stand-in for TensorRT " * 4
    outcomes = [DeviceOutcome(device=f"a-very-long-device-name-{i}", format="executorch", ok=True, size_bytes=10**7,
                              parity_passed=True, min_cosine=0.99999, latency_p50_ms=123.456, note=stand_in)
                for i in range(8)]
    lines, notes = compact_lines(outcomes)
    assert len(lines) == 8 and all(len(line) <= 80 for line in lines)
    assert notes == [stand_in] and all(line.endswith("[1]") for line in lines)


def test_results_have_a_short_repr_and_html_for_notebooks(exported):
    _, res = exported
    for obj in (res, res.artifact, sdk.load_artifact(res.artifact.path)):
        assert len(repr(obj)) < 200 and "android-arm64" in repr(obj)
        assert "android-arm64" in obj._repr_html_() and "report.html" in obj._repr_html_()
