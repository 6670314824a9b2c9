"""The bundle on the device: it loads, computes the numbers the reference says, and fits its budgets.

All five read one benchmark of the bundle (`device_benchmark`, --warmup/--iterations).
"""
from device_tests import checks


def test_loads(agent, device_benchmark, device_label, device_check):
    device_check(checks.loads(device_label, device_benchmark, agent.url))


def test_parity(device_benchmark, device_label, device_check):
    device_check(checks.parity(device_label, device_benchmark))


def test_latency_p90(device_benchmark, device_budgets, device_label, device_check):
    device_check(checks.latency(device_label, device_benchmark, device_budgets["latency_p90_ms"]))


def test_peak_memory(device_benchmark, device_budgets, device_label, device_check):
    device_check(checks.memory(device_label, device_benchmark, device_budgets["memory_budget_mb"]))


def test_energy_per_inference(device_benchmark, device_budgets, device_label, device_check):
    device_check(checks.energy(device_label, device_benchmark, device_budgets["energy_mj_per_inference"]))
