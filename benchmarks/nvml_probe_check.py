"""Real-hardware check of the NVML power probe: idle watts, then energy per iteration of a GPU matmul loop,
measured through the SDK's own probe and energy arithmetic (sdk.agent.bench.measure_energy).

    python benchmarks/nvml_probe_check.py [--idle-s 2] [--seconds 5] [--size 4096] [--gpu 0]

Needs an NVIDIA GPU (Volta or newer), nvidia-ml-py and torch with CUDA. This script may import torch (it
is a diagnostic); the probe it checks does not.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import torch

from sdk.agent.bench import measure_energy
from sdk.agent.power import NvmlProbe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-s", type=float, default=2.0, help="idle sampling before the loop")
    parser.add_argument("--seconds", type=float, default=5.0, help="rough length of the timed loop")
    parser.add_argument("--size", type=int, default=4096, help="square fp32 matmul size")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--settle-s", type=float, default=5.0, help="pause after calibration, before idle sampling")
    args = parser.parse_args()

    probe = NvmlProbe([args.gpu])
    reason = probe.unavailable_reason()
    if reason:
        raise SystemExit(f"NVML probe unavailable: {reason}")
    if not torch.cuda.is_available():
        raise SystemExit("torch has no CUDA here: the GPU loop needs torch with CUDA")
    device = torch.device("cuda", args.gpu)
    a = torch.randn(args.size, args.size, device=device)
    b = torch.randn(args.size, args.size, device=device)

    # Calibrate the iteration count for ~args.seconds, then let the GPU settle back to idle.
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    per_iter_s = (time.perf_counter() - start) / 10
    iterations = max(10, int(args.seconds / per_iter_s))
    time.sleep(args.settle_s)

    # Cross-check: NVML's instantaneous power (a different counter) sampled during the loop.
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
    watts: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            watts.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3)

    def workload() -> int:
        sampler = threading.Thread(target=sample)
        sampler.start()
        for _ in range(iterations):
            a @ b
        torch.cuda.synchronize(device)
        stop.set()
        sampler.join()
        return iterations

    report, why = measure_energy([probe], args.idle_s, workload)
    if report is None:
        raise SystemExit(f"no energy figure: {why}")
    flops = 2 * args.size ** 3
    print(json.dumps({"gpu": probe.scope(), "matmul": f"{args.size}x{args.size} fp32", "iterations": iterations,
                      "tflops": round(flops * iterations / report["loop_s"] / 1e12, 1),
                      "cross_check_power_usage_w": round(sum(watts) / len(watts), 1), **report}, indent=2))
    print(f"\nidle {report['idle_w']:.1f} W | loop {report['loop_w']:.1f} W over {report['loop_s']:.2f} s | "
          f"{report['per_inference_mj']:.2f} mJ per {args.size}^3 matmul above idle "
          f"({report['gross_per_inference_mj']:.2f} mJ gross); nvmlDeviceGetPowerUsage mean during the loop "
          f"{sum(watts) / len(watts):.1f} W")


if __name__ == "__main__":
    main()
