"""A wrongly shaped input is refused by the runtime on the device with a clear error, the session computes as
before it, and the agent keeps serving: it answers, and runs the bundle again."""
from device_tests import checks
from device_tests.plugin import run_benchmark
from sdk.core.errors import SdkError


def test_bad_input_refused_and_agent_keeps_serving(agent, bundle, device_upload, device_target, device_benchmark,
                                                   device_budgets, device_label, pytestconfig, device_check):
    if not device_benchmark.ran:
        device_check(checks.Verdict("bad input", skipped=checks.NOT_RUN))
    timeout_s = pytestconfig.getoption("edge_job_timeout_s")
    outcome = run_benchmark(agent, device_upload, device_target, warmup=0, iterations=1, energy=False, idle_s=0.0,
                            check_bad_input=True, timeout_s=timeout_s)
    serving_error = follow_up = None
    try:
        agent.device()
    except SdkError as exc:
        serving_error = str(exc)
    if serving_error is None and outcome.ran:
        follow_up = run_benchmark(agent, device_upload, device_target, warmup=0, iterations=1, energy=False,
                                  idle_s=0.0, timeout_s=timeout_s)
    device_check(checks.bad_input(device_label, outcome, bundle.manifest["inputs"], serving_error, follow_up,
                                  device_budgets["soak_max_drift"]))
