"""What every row is measured with: torch eager latency (the baseline), outputs of an artifact on held-out
inputs, and agreement with the torch fp32 model (top-1 for classifiers, cosine for embeddings)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

import backends
from sdk.agent.bench import latency_stats
from sdk.core.bundle import load_artifact


#: torch's own default thread count, read before the benchmark changes it
DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_eager(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], *, warmup: int, iterations: int,
                threads: int = DEFAULT_THREADS) -> dict[str, Any]:
    """Latency of the fp32 module as a user runs it (eval, no_grad, torch's default threads unless told), timed
    like the agent."""
    samples = []
    with torch.no_grad(), torch_threads(threads):
        for _ in range(warmup):
            model(*inputs)
        for _ in range(iterations):
            t = time.perf_counter()
            model(*inputs)
            samples.append((time.perf_counter() - t) * 1e3)
    return {"latency_ms": latency_stats(samples),
            "ran_on": f"torch {torch.__version__.split('+')[0]} eager, {threads} thread{'s' if threads > 1 else ''}"}


def reference_outputs(model: torch.nn.Module, eval_inputs: Sequence[tuple[torch.Tensor, ...]]) -> list[np.ndarray]:
    """The torch fp32 model's first output on each held-out input: what every row is compared with."""
    with torch.no_grad():
        return [_first(model(*x)).float().numpy() for x in eval_inputs]


def bundle_outputs(bundle: Path, eval_inputs: Sequence[tuple[torch.Tensor, ...]]) -> list[np.ndarray]:
    """The bundle's first output on each held-out input, run with its runtime's backend (static batch 1)."""
    artifact = load_artifact(bundle)
    session = backends.get(artifact.runtime).load(artifact.model_path, artifact.manifest)
    dtypes = [np.dtype(spec["dtype"]) for spec in artifact.manifest["inputs"]]
    return [np.asarray(session.run([t.numpy().astype(d, copy=False) for t, d in zip(x, dtypes)])[0], np.float32)
            for x in eval_inputs]


def agreement(metric: str, outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict[str, Any]:
    """top1: share of inputs whose arg-max class equals the fp32 model's. cosine: mean and worst cosine similarity
    of the outputs (for classifiers too, of the logits: it tells a near-tie flip from a broken model)."""
    cos = [float(np.dot(o.ravel(), r.ravel()) / (np.linalg.norm(o) * np.linalg.norm(r) + 1e-12))
           for o, r in zip(outputs, reference)]
    cosine = {"cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos)), "n": len(cos)}
    if metric == "top1":
        same = [int(np.argmax(o)) == int(np.argmax(r)) for o, r in zip(outputs, reference)]
        return {"metric": "top1", "value": float(np.mean(same)), **cosine}
    return {"metric": "cosine", "value": cosine["cosine"], "min": cosine["min_cosine"], **cosine}


def _first(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out
