"""The verdicts of the built-in device tests, as plain functions of the agent's results.

Each returns a Verdict: what was measured, against which budget, and either a failure message that names
bundle, device, measured value and budget, or why it could not be judged (a skip). The test modules only
hand these to pytest, so the rules can be read (and tested) here in one place.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from device_tests.config import Budget

__all__ = ["NOT_RUN", "Outcome", "Verdict", "bad_input", "energy", "latency", "loads", "memory", "parity",
           "soak_drift", "soak_memory"]

NOT_RUN = "not measured: the bundle did not run on the agent (see test_loads)"


@dataclass(frozen=True)
class Outcome:
    """One benchmark job: the agent's result (a BenchmarkResult or its dict), or why there is none."""

    result: Mapping[str, Any] | None
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.error is None and self.result is not None and bool(self.result.get("ran"))


@dataclass(frozen=True)
class Verdict:
    """A check's outcome. `failure` fails the test, else `skipped` skips it, else it passed."""

    check: str
    measured: str = "-"
    budget: str = "-"
    failure: str | None = None
    skipped: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.failure else "skipped" if self.skipped else "passed"


def _n(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def loads(label: str, outcome: Outcome, agent_url: str) -> Verdict:
    """The bundle loads and runs on the agent; cold load and first inference times are reported."""
    if outcome.error is not None:
        return Verdict("load", failure=f"{label}: the agent at {agent_url} could not run the bundle: {outcome.error}")
    r = outcome.result
    if not r.get("ran"):
        return Verdict("load", failure=f"{label}: not run on {agent_url}: its runtime {r.get('runtime')!r} is not "
                                       f"available there: {r.get('reason')}")
    phases = (("cold load", "load_ms"), ("first inference", "first_inference_ms"))
    times = [f"{what} {_n(r[key])} ms" for what, key in phases if r.get(key) is not None]
    return Verdict("load", measured=f"{', '.join(times) or 'ran'} on {r['ran_on']}")


def parity(label: str, outcome: Outcome) -> Verdict:
    """The device's outputs for the reference inputs match reference.npz within the recipe's tolerance."""
    if not outcome.ran:
        return Verdict("parity", skipped=NOT_RUN)
    p = outcome.result["parity"]
    tolerance = ", ".join(f"{k} {v}" for k, v in p["tolerance"].items() if v is not None)
    measured = ", ".join(f"{o['name']} cosine {o['cosine']:.6f}" if o.get("cosine") is not None
                         else f"{o['name']}: {o.get('error')}" for o in p["outputs"]) or "no outputs"
    budget = f"{tolerance} (the bundle's tolerance)"
    if p["passed"]:
        return Verdict("parity", measured, budget)
    return Verdict("parity", measured, budget,
                   failure=f"{label}: outputs do not match reference.npz within tolerance {tolerance}: "
                           f"{'; '.join(p['failures'])} (ran on {outcome.result['ran_on']})")


def latency(label: str, outcome: Outcome, budget: Budget) -> Verdict:
    """Latency p90 over the timed iterations within the budget."""
    if not outcome.ran:
        return Verdict("latency p90", skipped=NOT_RUN)
    stats, r = outcome.result["latency_ms"], outcome.result
    if stats.get("p90") is None:
        return Verdict("latency p90", f"mean {_n(stats['mean'])} ms", str(budget),
                       skipped=f"{label}: no latency percentiles: {stats.get('note', 'the agent reported none')}")
    p90 = stats["p90"]
    measured = f"p90 {_n(p90)} ms (p50 {_n(stats['p50'])} ms, n={stats['n']})"
    if budget.value is None:
        return Verdict("latency p90", measured, str(budget),
                       skipped=f"{label}: latency p90 {_n(p90)} ms, but no latency budget is set (latency_p90_ms in "
                               "device_tests.toml, --latency-budget-ms, or [budgets] in the device profile)")
    if p90 > budget.value:
        return Verdict("latency p90", measured, str(budget),
                       failure=f"{label}: latency p90 {_n(p90)} ms > budget {_n(budget.value)} ms ({budget.source}); "
                               f"p50 {_n(stats['p50'])} ms over {stats['n']} iterations on {r['ran_on']}")
    return Verdict("latency p90", measured, str(budget))


def memory(label: str, outcome: Outcome, budget: Budget) -> Verdict:
    """Peak resident memory of the benchmark process within the profile's memory budget."""
    if not outcome.ran:
        return Verdict("peak memory", skipped=NOT_RUN)
    r = outcome.result
    peak = r.get("peak_rss_mb")
    if peak is None:
        return Verdict("peak memory", budget=str(budget),
                       skipped=f"{label}: peak memory not measured: {r.get('peak_rss_reason', 'the agent reported none')}")
    measured = f"{_n(peak)} MB peak RSS"
    if budget.value is not None and peak > budget.value:
        baseline = r.get("baseline_rss_mb")
        before = f", {_n(baseline)} MB before the model loaded" if baseline is not None else ""
        return Verdict("peak memory", measured, str(budget),
                       failure=f"{label}: peak memory {_n(peak)} MB > budget {_n(budget.value)} MB ({budget.source}); "
                               f"resident set of the {r.get('rss_scope', 'benchmark process')}{before}")
    return Verdict("peak memory", measured, str(budget))


def energy(label: str, outcome: Outcome, budget: Budget) -> Verdict:
    """Energy per inference within budget, where the device has a power probe (skipped with its reason if not)."""
    if not outcome.ran:
        return Verdict("energy", skipped=NOT_RUN)
    r = outcome.result
    e = r.get("energy")
    if e is None:
        return Verdict("energy", "n/a", str(budget), skipped=f"{label}: energy not measured: {r.get('energy_reason')}")
    per = e.get("per_inference_mj")
    if per is None:
        return Verdict("energy", "n/a", str(budget),
                       skipped=f"{label}: energy per inference not resolved by {e['probe']}: {e.get('reason')}")
    measured = f"{_n(per)} mJ/inference ({e['probe']})"
    if budget.value is None:
        return Verdict("energy", measured, str(budget),
                       skipped=f"{label}: {_n(per)} mJ per inference ({e['probe']}), but no energy budget is set "
                               "(energy_mj_per_inference in device_tests.toml, --energy-budget-mj, or the profile)")
    if per > budget.value:
        return Verdict("energy", measured, str(budget),
                       failure=f"{label}: energy {_n(per)} mJ per inference > budget {_n(budget.value)} mJ "
                               f"({budget.source}); probe {e['probe']}, scope {e.get('scope')}")
    return Verdict("energy", measured, str(budget))


def _soak(label: str, outcome: Outcome | None, check: str) -> tuple[Mapping[str, Any] | None, Verdict | None]:
    """The soak data of a soak run (None when the bundle did not run at all), or the Verdict instead of it."""
    if outcome is None or (outcome.error is None and not outcome.ran):
        return None, Verdict(check, skipped=NOT_RUN)
    if outcome.error is not None:
        return None, Verdict(check, "run failed", failure=f"{label}: the soak run failed: {outcome.error}")
    soak = outcome.result.get("soak")
    if soak is None:
        return None, Verdict(check, skipped=f"{label}: the agent reported no soak data (a phone target, or an "
                                            "older agent)")
    return soak, None


def soak_drift(label: str, outcome: Outcome | None, budget: Budget) -> Verdict:
    """After the long run the outputs equal the first inference's (relative to their scale) and, if they
    matched the reference at the start, still do."""
    soak, instead = _soak(label, outcome, "soak drift")
    if instead:
        return instead
    r = outcome.result
    n = r["iterations"]
    after = soak["parity_after_loop"]
    if r["parity"]["passed"] and not after["passed"]:
        return Verdict("soak drift", f"parity lost after {n} iterations", str(budget),
                       failure=f"{label}: after {n} iterations the outputs no longer match reference.npz (they did at "
                               f"the first inference): {'; '.join(after['failures'])}")
    worst_rel, worst = -1.0, None
    for d in soak["drift"]:
        if d.get("error"):
            return Verdict("soak drift", d["error"], str(budget), failure=f"{label}: output {d['name']}: {d['error']}")
        rel = d["max_abs_change"] / d["max_abs_first"] if d["max_abs_first"] > 0 else d["max_abs_change"]
        if rel > worst_rel:
            worst_rel, worst = rel, d
    if worst is None:
        return Verdict("soak drift", "no outputs", str(budget))
    measured = f"relative change {worst_rel:.3g} ({worst['name']}) over {n} iterations"
    if budget.value is not None and worst_rel > budget.value:
        return Verdict("soak drift", measured, str(budget),
                       failure=f"{label}: output {worst['name']} drifted over {n} iterations: max |last - first| "
                               f"{worst['max_abs_change']:.3g} = {worst_rel:.3g} of its largest value "
                               f"{worst['max_abs_first']:.3g} > threshold {budget.value:g} ({budget.source})")
    return Verdict("soak drift", measured, str(budget))


def soak_memory(label: str, outcome: Outcome | None, budget: Budget) -> Verdict:
    """Resident memory grows no more than the threshold over the long run (a leak per inference would)."""
    soak, instead = _soak(label, outcome, "soak memory")
    if instead:
        return instead
    before, after, n = soak["rss_before_loop_mb"], soak["rss_after_loop_mb"], outcome.result["iterations"]
    if before is None or after is None:
        return Verdict("soak memory", "n/a", str(budget),
                       skipped=f"{label}: resident memory is not readable on the device (install psutil there)")
    growth = after - before
    measured = f"{growth:+.2f} MB over {n} iterations ({_n(before)} -> {_n(after)} MB)"
    if budget.value is not None and growth > budget.value:
        return Verdict("soak memory", measured, str(budget),
                       failure=f"{label}: resident memory grew {growth:.2f} MB over {n} iterations "
                               f"({_n(before)} -> {_n(after)} MB) > threshold {budget.value:g} MB ({budget.source})")
    return Verdict("soak memory", measured, str(budget))


def bad_input(label: str, outcome: Outcome, inputs: Sequence[Mapping[str, Any]], serving_error: str | None,
              follow_up: Outcome | None, drift: Budget) -> Verdict:
    """A wrongly shaped input is refused with an error that says what is wrong; the same session then gives
    the outputs it gave before (within the drift threshold), and the agent keeps serving: it answers
    (`serving_error` None) and runs the bundle again (`follow_up`)."""
    after = f"; afterwards the agent stopped answering: {serving_error}" if serving_error else ""
    if outcome.error is not None:
        return Verdict("bad input", "benchmark failed",
                       failure=f"{label}: a wrongly shaped input took the benchmark down instead of raising an "
                               f"error: {outcome.error}{after}")
    if not outcome.ran:
        return Verdict("bad input", skipped=NOT_RUN)
    bad = outcome.result.get("bad_input")
    if bad is None:
        return Verdict("bad input", skipped=f"{label}: the agent did not try a bad input (a phone target, or an "
                                            "older agent)")
    first = inputs[0]
    expected = f"{first['name']} of shape {first['shape']}"
    if not bad["rejected"]:
        return Verdict("bad input", f"accepted shape {bad['input_shape']}",
                       failure=f"{label}: the runtime accepted an input of shape {bad['input_shape']} (the model "
                               f"takes {expected}) without an error")
    error = bad["error"]
    measured = f"refused shape {bad['input_shape']}: {error[:160]}"
    if not any(word in error.lower() for word in (first["name"].lower(), "shape", "dimension")):
        return Verdict("bad input", measured, failure=f"{label}: the runtime refused shape {bad['input_shape']} but its "
                                                      f"error does not say what is wrong (expected {expected}): {error!r}")
    changed = soak_drift(label, outcome, drift)
    if changed.failure:
        return Verdict("bad input", measured, failure=f"{label}: after refusing the bad input the runtime computes "
                                                      f"differently: {changed.failure.removeprefix(label + ': ')}")
    if serving_error:
        return Verdict("bad input", measured, failure=f"{label}: the bad input was refused{after}")
    if follow_up is not None and not follow_up.ran:
        why = follow_up.error or follow_up.result.get("reason")
        return Verdict("bad input", measured, failure=f"{label}: after the bad input the agent could not run the "
                                                      f"bundle again: {why}")
    return Verdict("bad input", measured)
