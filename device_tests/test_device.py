"""The bundle on the device: it loads, computes the numbers the reference says, and fits its budgets.

All five read one benchmark of the bundle (`device_benchmark`, --warmup/--iterations).
"""
from device_tests import checks
from device_tests.presence import judge_where_verifiable, not_on_device


def test_loads(agent, device_benchmark, device_label, device_check):
    device_check(checks.loads(device_label, device_benchmark, agent.url))


def test_parity(device_benchmark, device_label, device_check):
    device_check(checks.parity(device_label, device_benchmark))


def _budgeted(verdict, budget, profile, benchmark, target):
    return judge_where_verifiable(verdict, budget, profile, not_on_device(profile, benchmark, target))


def test_latency_p90(device_benchmark, device_budgets, device_label, device_check, device_profile, device_target):
    budget = device_budgets["latency_p90_ms"]
    device_check(_budgeted(checks.latency(device_label, device_benchmark, budget), budget, device_profile,
                           device_benchmark, device_target))


def test_peak_memory(device_benchmark, device_budgets, device_label, device_check, device_profile, device_target):
    budget = device_budgets["memory_budget_mb"]
    device_check(_budgeted(checks.memory(device_label, device_benchmark, budget), budget, device_profile,
                           device_benchmark, device_target))


def test_energy_per_inference(device_benchmark, device_budgets, device_label, device_check, device_profile,
                              device_target):
    budget = device_budgets["energy_mj_per_inference"]
    device_check(_budgeted(checks.energy(device_label, device_benchmark, budget), budget, device_profile,
                           device_benchmark, device_target))
