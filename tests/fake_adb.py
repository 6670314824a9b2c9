#!/usr/bin/env python3
"""A stand-in for `adb` and for a phone, for the agent's phone tests (no real phone here).

The phone is a folder ($FAKE_ADB_ROOT) holding what the agent touches on a real one: the battery under
sys/class/power_supply/battery (files as the kernel's power_supply class lays them out) and
data/local/tmp. `adb shell` runs the command with /bin/sh, device paths mapped into the folder, like
adb ≥ 7 it returns the command's exit status. `make_phone` builds such a folder; `runner_main` is a
stand-in for ExecuTorch's executor_runner: same flags, same log lines, runs the bundle's ONNX model
with ONNX Runtime and draws more battery current while it runs.

Usage as adb: python fake_adb.py [-s SERIAL] devices|get-state|push|pull|shell ...
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SERIAL = "FAKE0001"
IDLE_UA, BUSY_UA = -310_000, -1_150_000  # battery current, discharging (kernel ABI: negative)
#: with FAKE_ADB_AWAIT_SAMPLE=1 the runner stays busy until a battery read began while it drew BUSY_UA, so a
#: test's energy window holds a busy sample however slowly a loaded machine schedules the probe's thread
SAMPLED_BUSY = ".battery-read-while-busy"
DEVICE_PATH = re.compile(r"(?<![\w./-])/(data|sys|sdcard)/")


def make_phone(root: Path, status: str = "Discharging", current_ua: int = IDLE_UA) -> Path:
    """A phone folder: a Pixel-like battery power supply, a USB supply, getprop and /data/local/tmp."""
    battery = root / "sys/class/power_supply/battery"
    battery.mkdir(parents=True)
    for name, value in {"type": "Battery", "status": status, "present": "1", "technology": "Li-ion",
                        "capacity": "78", "health": "Good", "temp": "291", "voltage_now": "3897000",
                        "current_now": str(current_ua), "current_avg": str(current_ua),
                        "charge_counter": "3412000", "cycle_count": "112"}.items():
        (battery / name).write_text(value + "\n")
    usb = root / "sys/class/power_supply/usb"
    usb.mkdir(parents=True)
    (usb / "type").write_text("USB\n")
    (usb / "online").write_text("1\n" if status == "Charging" else "0\n")
    (root / "data/local/tmp").mkdir(parents=True)
    bin_dir = root / "system/bin"
    bin_dir.mkdir(parents=True)
    props = {"ro.product.model": "Pixel 8", "ro.build.version.release": "15", "ro.product.cpu.abi": "arm64-v8a"}
    (bin_dir / "getprop").write_text("#!/bin/sh\ncase \"$1\" in\n" + "".join(
        f"  {k}) echo '{v}' ;;\n" for k, v in props.items()) + "esac\n")
    (bin_dir / "getprop").chmod(0o755)
    return root


def write_runner(dest: Path) -> Path:
    """An executable stand-in for executor_runner that calls runner_main() below with this interpreter."""
    dest.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                    "import fake_adb\nsys.exit(fake_adb.runner_main(sys.argv[1:]))\n")
    dest.chmod(0o755)
    return dest


def _log(msg: str, t0: float) -> None:
    """executor_runner's ET_LOG line format: level, time since start, file:line, message."""
    us = int((time.monotonic() - t0) * 1e6)
    print(f"I {us // 3_600_000_000:02d}:{us // 60_000_000 % 60:02d}:{us // 1_000_000 % 60:02d}.{us % 1_000_000:06d} "
          f"executorch:executor_runner.cpp:{300 + len(msg) % 97}] {msg}", flush=True)


def runner_main(argv: list[str]) -> int:
    t0 = time.monotonic()
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    battery = Path(os.environ["FAKE_ADB_ROOT"]) / "sys/class/power_supply/battery/current_now"
    sampled = Path(os.environ["FAKE_ADB_ROOT"]) / SAMPLED_BUSY
    sampled.unlink(missing_ok=True)
    idle = battery.read_text()
    battery.write_text(f"{BUSY_UA}\n")
    try:
        import numpy as np
        import onnxruntime as ort

        start = time.monotonic()
        session = ort.InferenceSession(flags.get("model_path", "model.pte"), providers=["CPUExecutionProvider"])
        _log(f"Model loaded in {(time.monotonic() - start) * 1e3:f} ms.", t0)
        feeds = {}
        for spec, path in zip(session.get_inputs(), flags["inputs"].split(",")):
            feeds[spec.name] = np.fromfile(path, dtype=np.float32).reshape(spec.shape)
        n = int(flags.get("num_executions", "1"))
        total = 0.0
        for i in range(n):
            start = time.monotonic()
            outputs = session.run(None, feeds)
            time.sleep(0.004)  # a phone is slower than this host; keeps the energy window measurable
            elapsed = (time.monotonic() - start) * 1e3
            total += elapsed
            _log(f"Iteration {i + 1} of {n}: {elapsed:f} ms", t0)
        _log(f"Model executed successfully {n} time(s) in {total:f} ms.", t0)
        _log(f"{len(outputs)} outputs: ", t0)
        if flags.get("output_file"):
            for i, out in enumerate(outputs):
                out.tofile(f"{flags['output_file']}-{i}.bin")
        deadline = time.monotonic() + 60
        while os.environ.get("FAKE_ADB_AWAIT_SAMPLE") and not sampled.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        battery.write_text(idle)
    return 0


def _device_path(path: str, root: Path) -> Path:
    return root / path.lstrip("/")


def main(argv: list[str]) -> int:
    root = Path(os.environ["FAKE_ADB_ROOT"])
    serial = os.environ.get("FAKE_ADB_SERIAL", SERIAL)
    if argv[:1] == ["-s"]:
        if argv[1] != serial:
            print(f"adb: device '{argv[1]}' not found", file=sys.stderr)
            return 1
        argv = argv[2:]
    cmd, args = argv[0], argv[1:]
    if cmd == "devices":
        print("List of devices attached")
        print(f"{serial}\tdevice product:shiba model:Pixel_8 device:shiba transport_id:1" if "-l" in args else f"{serial}\tdevice")
        print()
        return 0
    if cmd == "get-state":
        print("device")
        return 0
    if cmd == "push":
        src, dst = Path(args[0]), _device_path(args[1], root)
        if not dst.parent.is_dir():
            print(f"adb: error: failed to copy '{src}' to '{args[1]}': remote No such file or directory", file=sys.stderr)
            return 1
        shutil.copy2(src, dst)
        print(f"{src}: 1 file pushed, 0 skipped. 41.3 MB/s ({src.stat().st_size} bytes in 0.001s)")
        return 0
    if cmd == "pull":
        src = _device_path(args[0], root)
        if not src.exists():
            print(f"adb: error: failed to stat remote object '{args[0]}': No such file or directory", file=sys.stderr)
            return 1
        shutil.copy2(src, args[1])
        print(f"{args[0]}: 1 file pulled, 0 skipped. 38.9 MB/s ({src.stat().st_size} bytes in 0.001s)")
        return 0
    if cmd == "shell":
        command = DEVICE_PATH.sub(lambda m: f"{root}/{m.group(1)}/", " ".join(args))
        env = dict(os.environ, PATH=f"{root}/system/bin:{os.environ['PATH']}")
        current = root / "sys/class/power_supply/battery/current_now"
        busy = "current_now" in command and current.exists() and current.read_text().strip() == str(BUSY_UA)
        done = subprocess.run(["/bin/sh", "-c", command], cwd=root, env=env, check=False).returncode
        if busy:
            (root / SAMPLED_BUSY).touch()
        return done
    print(f"adb: unknown command {cmd}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
