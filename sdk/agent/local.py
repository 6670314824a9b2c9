"""LocalAgent: the agent's benchmark API without a server, for this machine (sdk.export(validate=True))."""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdk.agent import bench
from sdk.agent.device import describe
from sdk.agent.generate import GenerationResult, LlmBenchmark, generate
from sdk.agent.generate import benchmark as llm_benchmark
from sdk.agent.result import BenchmarkResult
from sdk.agent.spec import RunSpec
from sdk.artifact import Artifact, load_artifact
from sdk.errors import UserInputError

__all__ = ["LocalAgent", "as_folder", "as_zip"]


def _source(bundle: Any) -> Path:
    if isinstance(bundle, Artifact):
        return bundle.path
    path = getattr(getattr(bundle, "artifact", None), "path", None)  # an ExportResult
    if path is not None:
        return Path(path)
    if isinstance(bundle, (str, Path)):
        return Path(bundle)
    raise UserInputError(f"a bundle is a folder, a .zip or an sdk Artifact, got {type(bundle).__name__}")


@contextmanager
def as_zip(bundle: Any) -> Iterator[Path]:
    """The bundle as a zip file (zipped into a temporary folder if it is a folder or an Artifact)."""
    path = _source(bundle)
    if path.is_file() and zipfile.is_zipfile(path):
        yield path
        return
    zipped = load_artifact(path).zip()
    try:
        yield zipped
    finally:
        shutil.rmtree(zipped.parent, ignore_errors=True)


@contextmanager
def as_folder(bundle: Any) -> Iterator[Path]:
    """The bundle as a folder (unzipped into a temporary folder if it is a zip)."""
    path = _source(bundle)
    if path.is_dir():
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="edge-sdk-bundle-"))
    try:
        with zipfile.ZipFile(path) as zf:
            zf.extractall(tmp)  # a local, trusted file: the user's own bundle
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class LocalAgent:
    """The `sdk.agent.protocol.Agent` API on this machine, without a server: each benchmark in a child process
    with a timeout. For example::

        r = LocalAgent().benchmark("out/intel-cpu", iterations=100)   # or benchmark(bundle, RunSpec(...))
    """

    url = "local"

    def device(self) -> dict[str, Any]:
        return describe()

    def benchmark(self, bundle: Any, spec: RunSpec | None = None, **fields: Any) -> BenchmarkResult:
        """Benchmark a bundle here as `RunSpec.of(spec, **fields)` says. A runtime missing on this machine gives
        ran=False with the reason; a crash or timeout raises bench.BenchmarkFailed (an AgentError)."""
        run = RunSpec.of(spec, **fields)
        if run.target != "local":
            raise UserInputError(f"LocalAgent runs bundles on this machine only, not target={run.target!r}; "
                                 "serve an agent with an adb runner for phones")
        with as_folder(bundle) as folder:
            result = bench.run_isolated(folder, run)
        return BenchmarkResult({**result, "agent": self.url})

    def generate(self, bundle: Any, prompt_tokens: Sequence[int], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                 stop_tokens: Sequence[int] | None = None) -> GenerationResult:
        """Generate after `prompt_tokens` with an LLM bundle here (greedy unless temperature > 0); see docs/llm.md."""
        with as_folder(bundle) as folder:
            return generate(folder, prompt_tokens, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                            stop_tokens=stop_tokens)

    def llm_benchmark(self, bundle: Any, *, prompt_lens: Sequence[int] = (64,), new_tokens: int = 128,
                      idle_s: float = 1.0, energy: bool = True) -> LlmBenchmark:
        """TTFT, prefill/decode tokens/s, per-token latency, RSS and energy per token of an LLM bundle here."""
        with as_folder(bundle) as folder:
            return llm_benchmark(folder, prompt_lens, new_tokens, idle_s=idle_s, energy=energy)
