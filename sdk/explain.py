"""Failure messages in the user's terms: what failed, what the numbers say about why, and what to try.

>>> report = {"device": "intel-cpu", "format": "openvino", "recipe": ["int8"],
...           "parity": {"ran_on": "openvino CPU", "failures": ["out_0: cosine 0.9935 < 0.999"]},
...           "quantization": {"heldout": {"passed": True, "source": "last 4 of 20 calibration samples",
...                                        "outputs": [{"name": "out_0", "cosine": 0.99999}]}}}
>>> print(parity_failure(report))  # doctest: +NORMALIZE_WHITESPACE
intel-cpu: the openvino artifact (int8) does not match the fp32 model on openvino CPU: out_0: cosine 0.9935 < 0.999.
No bundle was written. On held-out data (last 4 of 20 calibration samples) it passed (min cosine 0.999990), so the
single example_inputs is the outlier: most likely a random tensor outside the range of the calibration data, which
set the INT8 activation ranges. Try: a real sample as example_inputs (e.g. calibration[0]).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["parity_failure"]


def parity_failure(report: Mapping[str, Any]) -> str:
    """The ParityError message for a bundle whose reference check (example_inputs, the bundle's reference.npz)
    failed. A quantized bundle only gets this far once its held-out parity passed (sdk.quantization)."""
    parity = report.get("parity") or {}
    head = (f"{report['device']}: the {report['format']} artifact ({', '.join(report.get('recipe') or [])}) does not "
            f"match the fp32 model on {parity.get('ran_on')}: {'; '.join(parity.get('failures') or [])}. "
            "No bundle was written.")
    heldout = (report.get("quantization") or {}).get("heldout") or {}
    outputs = heldout.get("outputs") or []
    if heldout.get("passed") and outputs and "example_inputs" not in str(heldout.get("source")):
        best = min(o["cosine"] for o in outputs)
        return (f"{head} On held-out data ({heldout['source']}) it passed (min cosine {best:.6f}), so the single "
                "example_inputs is the outlier: most likely a random tensor outside the range of the calibration "
                "data, which set the INT8 activation ranges. Try: a real sample as example_inputs "
                "(e.g. calibration[0]).")
    return (f"{head} Try: a gentler recipe (fp16 or fp32), or a looser sdk.Tolerance if this difference is "
            "acceptable for your use.")
