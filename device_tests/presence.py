"""Budgets for hardware that is not here are "not verified here", never a pass or a fail.

A device profile's budget (Jetson latency p90, a phone's memory budget) is a claim about that device. When the
bundle ran on a stand-in (ONNX Runtime CPU in place of TensorRT, the agent's own host in place of an adb phone),
the measured figure says nothing about it, so the check is skipped with the reason. A budget the user set for this
run (device_tests.toml, --latency-budget-ms ...) is still judged: it was set for the machine the agent is on.
"""
from __future__ import annotations

from typing import Any

from device_tests.checks import Outcome, Verdict
from device_tests.config import Budget

__all__ = ["not_on_device", "judge_where_verifiable"]


def not_on_device(profile: Any, outcome: Outcome, target: str) -> str | None:
    """Why `outcome` was not measured on `profile`'s hardware (None when it was, or when it did not run)."""
    if not outcome.ran:
        return None
    r = outcome.result
    if profile.agent_transport == "adb" and target != "phone":
        machine = (r.get("host") or {}).get("machine") or "host"
        return (f"{profile.id} is a phone driven over adb; this ran on the agent's own {machine} machine "
                f"({r.get('ran_on')})")
    if r.get("stand_in"):
        return f"{r['stand_in']}, so {profile.id}'s hardware was not measured"
    return None


def judge_where_verifiable(verdict: Verdict, budget: Budget, profile: Any, why_not_here: str | None) -> Verdict:
    """`verdict`, or a skip saying it is not verified here when a profile budget met a stand-in."""
    if why_not_here is None or budget.value is None or not budget.source.startswith("profile "):
        return verdict
    return Verdict(verdict.check, verdict.measured, str(budget),
                   skipped=f"not verified here: {verdict.check} budget {budget} is for {profile.id}; {why_not_here}")
