"""Power probes against faithful copies of what they read on the real platforms (tests/fixtures/power).

Every energy figure asserted here is exact: the probes stamp their samples with an injected clock that the
test moves by hand, and the test takes the samples at the moments it chooses (the sampling thread is parked),
so neither the machine's speed nor its load can change a number.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import types
from pathlib import Path

import fake_adb
import pytest

from sdk.agent import bench, power
from sdk.agent.adb import Adb
from sdk.agent.power import (
    AndroidBatteryProbe,
    JetsonProbe,
    NvmlProbe,
    PowermetricsProbe,
    RaplProbe,
    Reading,
    energy_report,
)
from sdk.agent.power.powermetrics import parse_samples, sample_energy, window_reading

FIXTURES = Path(__file__).parent / "fixtures" / "power"
PARKED = 3600.0  # interval_s that keeps the sampling thread from reading: the test samples by hand


class ManualClock:
    """A clock that moves only when the test moves it (`advance`, or `sleep` where code under test sleeps)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    sleep = advance


@pytest.fixture
def sysfs(tmp_path):
    """Copy a fixture tree (symlinks kept) so a test can move its counters."""
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(FIXTURES / name, dest, symlinks=True)
        return dest
    return copy


def set_value(path: Path, value: int) -> None:
    path.write_text(f"{value}\n")


def zone_file(root: Path, zone: str, name: str = "energy_uj") -> Path:
    return root / "sys/class/powercap" / zone / name


# -- RAPL --------------------------------------------------------------------------------------------------

def test_rapl_laptop_counts_psys_and_ignores_the_mmio_mirror(sysfs):
    root = sysfs("rapl-laptop")
    clock = ManualClock()
    probe = RaplProbe(root, clock=clock)
    assert probe.unavailable_reason() is None
    assert set(probe.zones) == {"package-0", "package-0/core", "package-0/uncore", "psys"}
    assert probe.scope().startswith("psys")
    probe.interval_s = PARKED  # read only at the window's edges: this test moves the counters itself
    probe.start()
    for zone, joules in {"intel-rapl:0": 3.0, "intel-rapl:0:0": 2.0, "intel-rapl:0:1": 0.25, "intel-rapl:1": 5.5}.items():
        f = zone_file(root, zone)
        set_value(f, int(f.read_text()) + int(joules * 1e6))
    clock.advance(2.0)
    reading = probe.stop()
    assert reading.joules == pytest.approx({"package-0": 3.0, "package-0/core": 2.0, "package-0/uncore": 0.25, "psys": 5.5})
    assert reading.total_j == pytest.approx(5.5)  # psys contains the package: never summed with it
    assert reading.seconds == 2.0 and reading.watts == pytest.approx(2.75) and reading.samples == 2


def test_rapl_wraparound(sysfs):
    root = sysfs("rapl-laptop")
    probe = RaplProbe(root, clock=ManualClock())
    assert probe.unavailable_reason() is None
    probe.interval_s = PARKED
    max_range = int(zone_file(root, "intel-rapl:1", "max_energy_range_uj").read_text())
    set_value(zone_file(root, "intel-rapl:1"), max_range - 1_000_000)  # 1 J before the wrap
    probe.start()
    set_value(zone_file(root, "intel-rapl:1"), max_range - 250_000)
    probe.sample()  # the thread's read between two wraps
    set_value(zone_file(root, "intel-rapl:1"), 2_500_000)  # wrapped, then 2.5 J more
    reading = probe.stop()
    assert reading.joules["psys"] == pytest.approx(3.5) and reading.samples == 3


def test_rapl_server_sums_packages_and_dram(sysfs):
    root = sysfs("rapl-server")
    probe = RaplProbe(root)
    assert probe.unavailable_reason() is None
    assert probe.scope() == "package-0 + package-0/dram + package-1 + package-1/dram"
    assert probe.total({"package-0": 10, "package-0/dram": 2, "package-1": 9, "package-1/dram": 1.5}) == 22.5


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_root_only_counter_says_how_to_fix(sysfs):
    root = sysfs("rapl-laptop")
    os.chmod(root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj", 0o400)
    reason = RaplProbe(root).unavailable_reason()
    assert "CVE-2020-8694" in reason and "chmod" in reason


def test_rapl_absent(tmp_path):
    assert "does not exist" in RaplProbe(tmp_path).unavailable_reason()
    (tmp_path / "sys/class/powercap").mkdir(parents=True)
    assert "no intel-rapl zones" in RaplProbe(tmp_path).unavailable_reason()


def test_this_machine_rapl_status():
    """Whatever this host has, the probe either works or says why (reported in the agent's /v1/device)."""
    probe = RaplProbe()
    reason = probe.unavailable_reason()
    assert reason is None or "powercap" in reason or "root" in reason or "RAPL" in reason


# -- Jetson INA3221 ----------------------------------------------------------------------------------------

def test_jetson_orin_nano_integrates_vdd_in(sysfs):
    root = sysfs("jetson-orin-nano")
    clock = ManualClock()
    probe = JetsonProbe(root, clock=clock)
    assert probe.unavailable_reason() is None
    assert set(probe.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert probe.scope() == "VDD_IN (module input power)"
    assert probe.read_power()["VDD_IN"] == pytest.approx(5.080 * 1.016)
    hwmon = next(root.glob("sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon*"))
    probe.interval_s = PARKED
    probe.start()  # sample at 0 s: 1.016 A
    clock.advance(0.3)
    probe.sample()  # 0.3 s: still 1.016 A
    set_value(hwmon / "curr1_input", 2032)  # the model starts: input current doubles
    probe.sample()  # 0.3 s: 2.032 A
    clock.advance(0.2)
    probe.sample()
    clock.advance(0.1)
    reading = probe.stop()  # 0.6 s
    assert reading.seconds == pytest.approx(0.6) and reading.samples == 5
    assert reading.total_j == pytest.approx(5.080 * 1.016 * 0.3 + 5.080 * 2.032 * 0.3, rel=1e-12)
    assert reading.total_j == reading.joules["VDD_IN"]
    assert reading.joules["VDD_SOC"] == pytest.approx(probe.read_power()["VDD_SOC"] * 0.6, rel=1e-12)


def test_sampled_probe_thread_reads_every_interval(sysfs):
    """The production path: the real clock and the thread's own samples. Power is constant, so the trapezoid
    integral is power x window whatever the number and moments of the samples (hence whatever the load)."""
    probe = JetsonProbe(sysfs("jetson-orin-nano"))
    assert probe.unavailable_reason() is None
    reads, read_power = threading.Semaphore(0), probe.read_power

    def counted() -> dict[str, float]:
        try:
            return read_power()
        finally:
            reads.release()

    probe.read_power = counted
    probe.start()
    assert all(reads.acquire(timeout=60) for _ in range(4))  # the start sample, then three of the thread's
    reading = probe.stop()
    assert reading.samples >= 5 and reading.seconds > 0
    assert reading.total_j == pytest.approx(5.080 * 1.016 * reading.seconds, rel=1e-9)


def test_jetson_agx_orin_sums_rails_and_skips_nc(sysfs):
    probe = JetsonProbe(sysfs("jetson-agx-orin"))
    assert probe.unavailable_reason() is None
    assert set(probe.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert probe.scope().startswith("sum of") and "no input rail" in probe.scope()
    power = probe.read_power()
    assert probe.total(power) == pytest.approx(sum(power.values()))


def test_jetson_disabled_channel_is_skipped(sysfs):
    root = sysfs("jetson-orin-nano")
    set_value(next(root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")) / "in3_enable", 0)
    probe = JetsonProbe(root)
    assert probe.unavailable_reason() is None
    assert set(probe.rails) == {"VDD_IN", "VDD_CPU_GPU_CV"}


def test_jetson_absent_and_legacy(tmp_path):
    assert "not a Jetson" in JetsonProbe(tmp_path).unavailable_reason()
    (tmp_path / "sys/bus/i2c/drivers/ina3221x").mkdir(parents=True)
    assert "L4T 32" in JetsonProbe(tmp_path).unavailable_reason()


# -- macOS powermetrics ------------------------------------------------------------------------------------

def test_powermetrics_recording_parses():
    samples = parse_samples((FIXTURES / "powermetrics-m2.plist").read_bytes())
    assert len(samples) == 5 and samples[0]["hw_model"] == "Mac14,2"
    seconds, joules = sample_energy(samples[2])
    assert seconds == pytest.approx(0.10052125)
    assert joules == pytest.approx({"cpu": 0.289, "gpu": 0.004, "ane": 0.0})  # mJ fields -> J


def test_powermetrics_drops_a_partial_trailing_sample():
    data = (FIXTURES / "powermetrics-m2.plist").read_bytes()
    assert len(parse_samples(data[: len(data) - 200])) == 4


def recorded_docs() -> list[bytes]:
    return [d.strip(b"\x00\r\n\t ") for d in (FIXTURES / "powermetrics-m2.plist").read_bytes().split(b"\x00")
            if d.strip()]


def test_powermetrics_window_weights_samples_by_overlap():
    """Samples stamped with their end times, back to back: the window takes the samples inside it whole and
    the overlapping fraction of those at its edges; a window the samples cover under 90% is scaled, and says so."""
    docs = recorded_docs()
    energy = [sample_energy(parse_samples(d)[0]) for d in docs]
    seconds, joules = [s for s, _ in energy], [sum(j.values()) for _, j in energy]
    ends, t = [], 50.0
    for s in seconds:
        t += s
        ends.append(t)
    stamped = list(zip(ends, docs))
    reading = window_reading(stamped, ends[0] - seconds[0] / 2, ends[3] - seconds[3] / 2)  # half, 1, 2, half
    assert reading.samples == 4 and reading.warnings == () and set(reading.joules) == {"cpu", "gpu", "ane"}
    assert reading.seconds == pytest.approx(seconds[0] / 2 + seconds[1] + seconds[2] + seconds[3] / 2, rel=1e-9)
    assert reading.total_j == pytest.approx(joules[0] / 2 + joules[1] + joules[2] + joules[3] / 2, rel=1e-9)
    assert reading.joules["cpu"] == pytest.approx(
        energy[0][1]["cpu"] / 2 + energy[1][1]["cpu"] + energy[2][1]["cpu"] + energy[3][1]["cpu"] / 2, rel=1e-9)
    gap = window_reading([stamped[0], stamped[4]], ends[0] - seconds[0], ends[4])  # 3 of 5 samples missing
    assert gap.samples == 2
    assert gap.total_j == pytest.approx((joules[0] + joules[4]) * gap.seconds / (seconds[0] + seconds[4]), rel=1e-9)
    assert "energy scaled from the covered part" in gap.warnings[0]
    with pytest.raises(power.ProbeError, match="no sample covering.*superuser"):
        window_reading(stamped, ends[4] + 1, ends[4] + 2, b"powermetrics: must be invoked as the superuser")


def test_powermetrics_probe_on_a_replayed_stream():
    """The process side: powermetrics started with the right flags, its stream read, stamped and stopped.
    (The arithmetic is exact in the test above; a real-time window is never asserted to a number.)"""
    probe = PowermetricsProbe([sys.executable, str(FIXTURES / "fake_powermetrics.py"),
                               str(FIXTURES / "powermetrics-m2.plist")], interval_ms=100)
    assert probe.unavailable_reason() is None
    probe.start()
    assert probe._chunks, "start() returns once powermetrics' first sample arrived"
    deadline = time.monotonic() + 60  # wait for a sample that ends inside the window, however busy the machine
    while len(probe._chunks) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    reading = probe.stop()
    assert probe._proc.poll() is not None  # powermetrics is not left running
    assert reading.samples >= 1 and set(reading.joules) == {"cpu", "gpu", "ane"} and reading.total_j > 0


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the real powermetrics is probed")
def test_powermetrics_elsewhere():
    assert PowermetricsProbe().unavailable_reason() == "powermetrics is macOS only"


# -- NVML --------------------------------------------------------------------------------------------------

def fake_pynvml(counter_mj: list[int]) -> types.ModuleType:
    """The few NVML calls the probe makes, over a counter the test moves: no NVIDIA driver exists on the test
    machine (benchmarks/nvml_probe_check.py is the check on a real GPU)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.NVMLError_NotSupported = type("NVMLError_NotSupported", (nvml.NVMLError,), {})
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(counter_mj)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda handle: "NVIDIA H200"
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda handle: counter_mj[handle]
    return nvml


def test_nvml_counter_integrates_exactly(monkeypatch):
    counter = [81_000_000, 7_000]  # mJ since the driver loaded, two GPUs
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counter))
    clock = ManualClock()
    probe = NvmlProbe(clock=clock)
    assert probe.unavailable_reason() is None
    assert probe.scope() == "gpu0 (NVIDIA H200) + gpu1 (NVIDIA H200) board energy"
    probe.interval_s = PARKED
    probe.start()
    counter[0] += 1_500
    clock.advance(0.5)
    probe.sample()
    counter[0] += 2_500
    counter[1] += 40
    clock.advance(0.5)
    reading = probe.stop()
    assert reading.joules == pytest.approx({"gpu0": 4.0, "gpu1": 0.04}, rel=1e-12)
    assert reading.seconds == 1.0 and reading.total_j == pytest.approx(4.04) and reading.samples == 3
    probe.start()
    counter[0] -= 1
    with pytest.raises(power.ProbeError, match="went backwards"):  # NVML's counter never wraps
        probe.stop()


def test_nvml_without_a_driver_says_so():
    reason = NvmlProbe().unavailable_reason()
    if reason is None:
        pytest.skip("this machine has an NVIDIA driver: run benchmarks/nvml_probe_check.py for the real check")
    assert "NVML" in reason or "nvidia-ml-py" in reason


# -- Android battery over adb ------------------------------------------------------------------------------

@pytest.fixture
def phone(tmp_path, monkeypatch):
    def make(**kwargs) -> Adb:
        root = fake_adb.make_phone(tmp_path / f"phone-{len(list(tmp_path.iterdir()))}", **kwargs)
        monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
        return Adb((sys.executable, str(Path(fake_adb.__file__))), fake_adb.SERIAL)
    return make


def test_android_battery_discharging(phone):
    probe = AndroidBatteryProbe(phone())
    assert probe.unavailable_reason() is None
    assert "negative while discharging" in probe.scope()
    assert probe.read_power()["battery"] == pytest.approx(0.310 * 3.897)


def test_android_battery_vendor_positive_current(phone):
    probe = AndroidBatteryProbe(phone(current_ua=420_000))
    assert probe.unavailable_reason() is None
    assert "positive while discharging" in probe.scope()
    assert probe.read_power()["battery"] == pytest.approx(0.420 * 3.897)


def test_android_battery_integrates_current_times_voltage(phone, tmp_path):
    clock = ManualClock()
    probe = AndroidBatteryProbe(phone(), clock=clock)
    assert probe.unavailable_reason() is None
    current_now = Path(os.environ["FAKE_ADB_ROOT"]) / "sys/class/power_supply/battery/current_now"
    probe.interval_s = PARKED
    probe.start()  # 0 s: the idle draw, 310 mA
    clock.advance(1.0)
    probe.sample()
    set_value(current_now, fake_adb.BUSY_UA)  # the model runs: 1150 mA
    probe.sample()
    clock.advance(0.5)
    reading = probe.stop()  # 1.5 s
    assert reading.samples == 4 and reading.seconds == 1.5
    assert reading.joules["battery"] == pytest.approx(0.310 * 3.897 * 1.0 + 1.150 * 3.897 * 0.5, rel=1e-12)


def test_android_battery_charging_is_refused(phone):
    reason = AndroidBatteryProbe(phone(status="Charging")).unavailable_reason()
    assert "'Charging'" in reason and "wireless adb" in reason


def test_detect_lists_every_probe_with_a_reason(phone):
    found = power.detect(root="/nonexistent", adb=phone(status="Full"), powermetrics_command=None, nvml=False)
    assert found.working == []
    assert set(found.unavailable) == {"android-battery", "jetson-ina3221", "powermetrics", "rapl"}
    assert found.reason().startswith("no power probe works here")


# -- energy arithmetic and the measurement path ------------------------------------------------------------

def test_energy_per_inference_subtracts_idle():
    probe = JetsonProbe("/")
    probe.rails = {"VDD_IN": None}
    idle = Reading("jetson-ina3221", 2.0, {"VDD_IN": 10.0}, 10.0, 100)  # 5 W idle
    loop = Reading("jetson-ina3221", 4.0, {"VDD_IN": 32.0}, 32.0, 200)  # 8 W during the loop
    report = energy_report(probe, idle, loop, iterations=400)
    assert report["idle_w"] == 5.0 and report["loop_w"] == 8.0
    assert report["per_inference_mj"] == pytest.approx((32.0 - 5.0 * 4.0) / 400 * 1e3)
    assert report["gross_per_inference_mj"] == pytest.approx(80.0)
    below = energy_report(probe, idle, Reading("jetson-ina3221", 4.0, {"VDD_IN": 19.0}, 19.0, 200), 400)
    assert below["per_inference_mj"] is None and "not above idle" in below["reason"]


@pytest.fixture
def bench_clock(monkeypatch) -> ManualClock:
    """measure_energy's idle wait (`time.sleep(idle_s)`) moves the manual clock instead of waiting."""
    clock = ManualClock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(sleep=clock.sleep))
    return clock


def test_measure_energy_with_a_jetson_probe(sysfs, bench_clock):
    root = sysfs("jetson-orin-nano")
    curr = next(root.glob("sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon*")) / "curr1_input"
    probe = JetsonProbe(root, clock=bench_clock)
    assert probe.unavailable_reason() is None
    probe.interval_s = PARKED

    def workload() -> int:  # the model draws 2 A more for 0.5 s over 100 inferences
        set_value(curr, 3016)
        probe.sample()
        bench_clock.advance(0.5)
        probe.sample()
        set_value(curr, 1016)
        return 100

    report, reason = bench.measure_energy([probe], idle_s=0.3, workload=workload)
    assert reason is None and report["probe"] == "jetson-ina3221"
    assert (report["idle_s"], report["loop_s"]) == (0.3, 0.5)
    assert (report["idle_w"], report["loop_w"]) == (round(5.080 * 1.016, 4), round(5.080 * 3.016, 4))  # as reported
    assert report["per_inference_mj"] == pytest.approx(5.080 * 2.0 * 0.5 / 100 * 1e3, rel=1e-9)
    assert report["other_probes"] == []


def test_measure_energy_probe_failure_still_runs_the_workload(sysfs, bench_clock):
    root = sysfs("jetson-orin-nano")
    probe = JetsonProbe(root, clock=bench_clock)
    assert probe.unavailable_reason() is None
    hwmon = next(root.glob("sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon*"))
    ran = []

    def workload() -> int:
        (hwmon / "curr1_input").unlink()  # the sensor disappears mid-run
        ran.append(True)
        return 10

    report, reason = bench.measure_energy([probe], idle_s=0.1, workload=workload)
    assert ran == [True] and report is None and "jetson-ina3221 probe failed" in reason
