"""Does the agent measure what OpenVINO's own tool measures? Median latency of one OpenVINO bundle, taken by
the agent and by `benchmark_app` on the same IR, in the same run, alternating rounds so that clock drift
and thermal state hit both alike.

    python benchmarks/agent_vs_benchmark_app.py [--rounds 3] [--iterations 300] [--agent http://host:8765]

Without --agent the agent is LocalAgent (the same measurement in a child process that a served agent runs).
benchmark_app runs with the settings the agent's OpenVINO backend uses: CPU, latency hint, sync API, one
request, f32 inference precision.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import sdk  # noqa: E402
from benchmarks.harness_check import benchmark_app  # noqa: E402
from sdk.agent import Client, LocalAgent  # noqa: E402


class ConvNet(nn.Module):
    """A small ResNet-like CNN at 1x3x160x160: a few ms per inference on a laptop CPU, so per-call Python
    overhead (tens of microseconds) is small against the model's time, as for real models."""

    def __init__(self):
        super().__init__()
        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.body = nn.Sequential(block(3, 32, 2), block(32, 64, 2), block(64, 128, 2), block(128, 256, 2))
        self.head = nn.Linear(256, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--agent", help="URL of a running agent (token from EDGE_SDK_AGENT_TOKEN); default: LocalAgent")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="agent-vs-benchmark-app-"))
    try:
        torch.manual_seed(0)
        model = ConvNet().eval()
        result = sdk.export(model, "intel-cpu", (torch.randn(1, 3, 160, 160),), output_dir=out, validate=False)
        bundle = result.artifact
        model_xml = bundle.model_path
        agent = Client(args.agent) if args.agent else LocalAgent()

        agent_ms, app_ms = [], []
        for _ in range(args.rounds):
            r = agent.benchmark(bundle, warmup=20, iterations=args.iterations, idle_s=0, energy=False)
            agent_ms.append(r.latency_ms.p50)
            app_ms.append(benchmark_app(model_xml, args.iterations))
        ran_on = r.ran_on
    finally:
        shutil.rmtree(out, ignore_errors=True)

    a, b = statistics.median(agent_ms), statistics.median(app_ms)
    ratios = [x / y for x, y in zip(agent_ms, app_ms)]
    paired = statistics.median(ratios)
    print(f"model: ConvNet 1x3x160x160 fp32, OpenVINO IR; agent ran on: {ran_on}; {args.rounds} rounds x "
          f"{args.iterations} iterations each\n")
    print(f"{'round':>5} | {'agent p50 (ms)':>14} | {'benchmark_app median (ms)':>25} | {'ratio':>6}")
    print("-" * 62)
    for i, (x, y) in enumerate(zip(agent_ms, app_ms), 1):
        print(f"{i:>5} | {x:>14.3f} | {y:>25.3f} | {x / y:>6.3f}")
    print("-" * 62)
    print(f"{'median':>6}| {a:>14.3f} | {b:>25.3f} | {a / b:>6.3f}")
    verdict = "within" if abs(paired - 1) <= 0.10 else "OUTSIDE"
    print(f"\nmedian of the per-round ratios (paired, robust to load drifting between rounds): {paired:.3f}: "
          f"{verdict} the 10% goal. Load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs (a busy machine makes both numbers noisy)")


if __name__ == "__main__":
    main()
