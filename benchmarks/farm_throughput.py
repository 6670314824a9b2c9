"""Does the farm scale with devices? Jobs per second through the farm with one device of a profile, then with
two, in one run on one local Ray cluster (a head and two worker nodes on 127.0.0.1, one device each), in
alternating rounds so that the machine's load hits both alike.

    python benchmarks/farm_throughput.py [--rounds 2] [--jobs 24] [--iterations 3000]

Each job is a real benchmark of a tiny ONNX bundle (tests/agent_bundles.py) on a device actor running
LocalAgent, so the "devices" share this machine's CPU cores: the ratio is bounded by the free cores here, not
by the farm; on a lab, each device computes on its own hardware.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import ray  # noqa: E402
from agent_bundles import make_bundle, zip_bundle  # noqa: E402
from farm_cluster import LocalRayCluster  # noqa: E402

import sdk  # noqa: E402
from sdk.farm import LocalConnection  # noqa: E402

PROFILE = "jetson-orin-nano"


def jobs_per_s(farm: sdk.farm.Farm, bundles: list[Path], spec: dict, labels: dict | None) -> float:
    start = time.perf_counter()
    results = farm.run_many(bundles, spec, labels=labels)
    elapsed = time.perf_counter() - start
    assert all(r.ran and r.parity.passed for r in results)
    return len(results) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=3000, help="timed iterations per job (device work)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        root = Path(tmp)
        cluster = LocalRayCluster(root)
        try:
            cluster.start({"worker-a": 1, "worker-b": 1})
            farm = sdk.farm.connect(cluster.address, store=root / "results.sqlite3")
            for device, node in (("dev-a", "worker-a"), ("dev-b", "worker-b")):
                sdk.farm.host(cluster.address, PROFILE, LocalConnection(), name=device, node=node)
            bundles = [zip_bundle(make_bundle(root / "bundles", seed, device=PROFILE, runtime="tensorrt"),
                                  root / f"{seed}.zip") for seed in range(args.jobs)]
            spec = {"warmup": 10, "iterations": args.iterations, "idle_s": 0.0, "energy": False}
            farm.run_many(bundles[:4], spec)  # warm both devices (their benchmark launchers)
            one, two = [], []
            for _ in range(args.rounds):
                one.append(jobs_per_s(farm, bundles, spec, {"device": "dev-a"}))
                two.append(jobs_per_s(farm, bundles, spec, None))
            used = {r.device for r in farm.jobs() if r.status == "done"}
        finally:
            ray.shutdown()
            cluster.stop()
    print(f"{args.jobs} jobs x {args.rounds} rounds, {args.iterations} iterations each, devices used: {sorted(used)}")
    print(f"1 device : {', '.join(f'{x:.2f}' for x in one)} jobs/s (median {statistics.median(one):.2f})")
    print(f"2 devices: {', '.join(f'{x:.2f}' for x in two)} jobs/s (median {statistics.median(two):.2f})")
    print(f"ratio 2 devices / 1 device: {statistics.median(two) / statistics.median(one):.2f}x "
          f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
