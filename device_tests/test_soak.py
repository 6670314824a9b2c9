"""A long run (--soak-iterations, default 1000): the outputs do not drift and resident memory does not grow."""
from device_tests import checks


def test_soak_no_drift(device_soak, device_budgets, device_label, device_check):
    device_check(checks.soak_drift(device_label, device_soak, device_budgets["soak_max_drift"]))


def test_soak_no_memory_growth(device_soak, device_budgets, device_label, device_check):
    device_check(checks.soak_memory(device_label, device_soak, device_budgets["soak_rss_growth_mb"]))
