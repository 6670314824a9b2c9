"""A device test of your own, next to the built-in suite, with the edge-sdk pytest plugin's fixtures.

    pytest samples/device_test_example.py --agent http://jetson.local:8765 --bundle out/jetson-orin-nano

`agent` is an sdk.agent.Client (or LocalAgent for `--agent local`), `bundle` the sdk.Artifact of
each --bundle, `device_profile` its sdk.devices.DeviceProfile. Without --bundle these tests are skipped.
"""
import pytest


def test_p90_keeps_10pct_headroom(agent, bundle, device_profile):
    """Stay 10% under the profile's latency budget on the device itself, so a slower batch of boards still fits."""
    budget = device_profile.budgets.get("latency_p90_ms")
    if budget is None:
        pytest.skip(f"profile {device_profile.id} sets no latency budget")
    r = agent.benchmark(bundle, warmup=10, iterations=100, energy=False)
    assert r.parity.passed, r.parity.failures
    assert r.latency_ms.p90 < 0.9 * budget, (f"{bundle.path} on {r.ran_on}: p90 {r.latency_ms.p90:.2f} ms "
                                             f">= 90% of {budget} ms")


def test_every_frame_of_a_30_fps_camera(agent, bundle):
    """A 30 frames/s camera pipeline needs even the slow inferences (p99) under one frame time, 33 ms."""
    r = agent.benchmark(bundle, warmup=10, iterations=300, energy=False)
    assert r.latency_ms.p99 < 1000 / 30, f"{bundle.path} on {r.ran_on}: p99 {r.latency_ms.p99:.2f} ms misses 30 fps"
