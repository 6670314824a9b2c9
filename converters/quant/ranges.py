"""Activations that no int8 grid can hold, found on the calibration data and left float.

An additive attention mask (Hugging Face fills padded positions with float32's minimum, others use -1e9)
shares its add with the attention scores; quantizing that add to 256 levels spanning ±3.4e38 zeroes the scores,
and the embeddings come out unrelated to the float model's (cosine 0.4-0.5 measured on all-MiniLM-L6-v2 with
XNNPACKQuantizer and ai-edge-quantizer). No activation of a working network reaches a million, so any op whose
input or output does stays float, and the report says which and why.
"""
from __future__ import annotations

import math

#: magnitudes beyond this are masks or sentinels, not signal
EXTREME_ABS = 1e6


def extreme(abs_max: float) -> bool:
    """True for a range no int8 scale can represent usefully alongside real activations."""
    return not math.isfinite(abs_max) or abs_max > EXTREME_ABS


def note(ops: list[str]) -> str:
    """The report line for the ops left float because of their range."""
    return (f"{len(ops)} op(s) kept float because an input or output reaches beyond ±{EXTREME_ABS:.0e} on the "
            f"calibration data (an additive attention mask or a sentinel; int8 cannot hold it beside real values): "
            f"{', '.join(ops[:8])}{' …' if len(ops) > 8 else ''}")
