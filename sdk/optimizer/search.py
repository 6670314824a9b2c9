"""`sdk.optimize`: search recipes for the fastest (or smallest, or least energy) artifact that keeps accuracy.

Each Optuna trial picks a precision and (when training is allowed) a pass, exports with `sdk.export`, scores the
metric through the artifact's own runtime on a small eval subset first (a candidate that already misses
`max_drop` there is rejected before any device time), then on all of `eval_data`, and only then benchmarks it on
the agent. Objectives (both minimised): the accuracy drop against the runtime's plain fp32 export, measured in the
same run, and the chosen cost (p50 latency, energy, size or peak memory). The study lives in SQLite, so a stopped
search resumes: `Budget.trials` counts the trials already in the study.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdk import devices
from sdk.core.errors import ParityError, SdkError, UserInputError
from sdk.core.results import Unavailable, to_dict
from sdk.core.recipes import parse
from sdk.optimizer.evaluate import EvalSet, drop_between, eval_set, outputs, score
from sdk.optimizer.space import Budget, SearchSpace, space_for

__all__ = ["Candidate", "Estimate", "OptimizeResult", "SearchCost", "Unavailable", "optimize", "t_interval"]

log = logging.getLogger("sdk")
OBJECTIVES = {"latency": "latency_p50_ms", "energy": "energy_mj", "size": "size_mb", "memory": "memory_mb"}
CONSTRAINTS = ("size_mb", "memory_mb", "latency_ms", "min_delegated")
_T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}  # two-sided 95% Student t, by number of runs


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95% interval and how the interval was made."""

    value: float
    low: float
    high: float
    how: str

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class Candidate:
    """One recipe as exported and measured (or why it was rejected). `recipe` round-trips through sdk.export."""

    trial: int | None
    recipe: tuple[str, ...]
    status: str  # "measured" or "rejected"
    reason: str | None = None
    metric: dict[str, Any] | None = None
    drop: Estimate | None = None
    latency_p50_ms: Estimate | None = None
    latency_p90_ms: Estimate | None = None
    size_mb: float | None = None
    memory_mb: float | None = None
    energy_mj: float | Unavailable | None = None
    delegated: float | Unavailable | None = None
    violations: tuple[str, ...] = ()
    run: str = ""
    kept_float: tuple[str, ...] = ()  # layers the export's fallback kept in float (mixed precision), in the order kept
    controlled: bool = False  # exported with accuracy control: `OptimizeResult.export` repeats it
    bundle: str = ""  # where the search wrote its bundle (kept until the output folder is removed)

    @property
    def label(self) -> str:
        """The recipe as a person reads it, with the layers mixed precision kept in float."""
        kept = f" ({len(self.kept_float)} layer(s) kept float: {', '.join(self.kept_float)})" if self.kept_float else ""
        return ", ".join(self.recipe) + kept

    @property
    def feasible(self) -> bool:
        return self.status == "measured" and not self.violations

    def value(self, objective: str) -> float | None:
        got = getattr(self, OBJECTIVES[objective])
        got = got.value if isinstance(got, Estimate) else got
        return got if isinstance(got, (int, float)) else None

    def to_dict(self) -> dict[str, Any]:
        return {**to_dict(self), "feasible": self.feasible}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        def restore(key: str, value: Any) -> Any:
            if isinstance(value, dict) and "unavailable" in value:
                return Unavailable(value["unavailable"])
            if key in ("drop", "latency_p50_ms", "latency_p90_ms") and value is not None:
                return Estimate(**value)
            return tuple(value) if key in ("recipe", "violations", "kept_float") else value
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: restore(k, v) for k, v in d.items() if k in names})


@dataclass(frozen=True)
class SearchCost:
    """What this run of the search spent: wall minutes, seconds on the device (benchmarks), trials."""

    minutes: float
    device_s: float
    trials_this_run: int
    trials_in_study: int
    rejected_before_device: int


@dataclass
class OptimizeResult:
    """`best` (None when no candidate met max_drop and the constraints; `why` says so), `pareto`, `baseline`
    (the runtime's plain fp32 export, measured in this run; it may be the best or on the front too), the trials'
    candidates (earlier runs' included, deduplicated by recipe), the space and the search's cost."""

    best: Candidate | None
    pareto: list[Candidate]
    baseline: Candidate
    candidates: list[Candidate]
    space: SearchSpace
    cost: SearchCost
    objective: str
    metric: str
    max_drop: float
    constraints: dict[str, float]
    output_dir: Path
    why: str | None = None
    _export_args: dict[str, Any] = field(default_factory=dict, repr=False)

    def speedup(self, candidate: Candidate) -> float | None:
        """Baseline p50 / candidate p50 (both measured on the same agent)."""
        if candidate.latency_p50_ms is None or self.baseline.latency_p50_ms is None:
            return None
        return self.baseline.latency_p50_ms.value / candidate.latency_p50_ms.value

    def export(self, output_dir: str | Path | None = None) -> Any:
        """The best candidate's bundle: `sdk.export` with its recipe (written to `<output_dir>/<device-id>/`)."""
        from sdk.pipeline import export

        if self.best is None:
            raise SdkError(f"sdk.optimize found no candidate to export: {self.why}")
        control = self._export_args["control"] if self.best.controlled else {}
        return export(**self._export_args["export"], **control, recipe=list(self.best.recipe),
                      output_dir=output_dir or self.output_dir / "best")

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "metric": self.metric, "max_drop": self.max_drop,
                "constraints": self.constraints, "space": self.space.to_dict(), "cost": dataclasses.asdict(self.cost),
                "best": self.best.to_dict() if self.best else None, "why": self.why,
                "baseline": self.baseline.to_dict(), "pareto": [c.trial for c in self.pareto],
                "candidates": [{**c.to_dict(), "speedup_vs_fp32": self.speedup(c)} for c in self.candidates]}


def _agent(agent: Any) -> Any:
    if agent == "local":
        from sdk.agent.local import LocalAgent
        return LocalAgent()
    if isinstance(agent, str) and agent.startswith(("http://", "https://")):
        from sdk.agent.client import Client
        return Client(agent)
    if hasattr(agent, "benchmark"):
        return agent
    raise UserInputError(f"agent must be 'local', an agent URL (http://host:port) or an object with .benchmark "
                         f"(a farm from sdk.farm), got {agent!r}")


def t_interval(values: Sequence[float]) -> Estimate:
    """The mean of `values` with its 95% Student-t interval (the low end held at 0: latencies, ratios)."""
    a = np.asarray(values, dtype=np.float64)
    half = _T95.get(len(a), 2.0) * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return Estimate(float(a.mean()), max(0.0, float(a.mean() - half)), float(a.mean() + half),
                    f"t-interval over {len(a)} runs (low end held at 0)")


@dataclass
class _Measurer:
    """Benchmarks bundles on the agent `repeats` times and keeps the device time spent."""

    agent: Any
    repeats: int
    iterations: int
    device_s: float = 0.0

    def __call__(self, bundle: Path) -> dict[str, Any]:
        runs = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            result = self.agent.benchmark(bundle, warmup=5, iterations=self.iterations, idle_s=0.5)
            self.device_s += time.perf_counter() - t0
            if not result["ran"]:
                raise SdkError(f"the agent could not run {bundle}: {result.get('reason')}")
            runs.append(result)
        energies = [(r.get("energy") or {}).get("per_inference_mj") for r in runs]
        return {"latency_p50_ms": t_interval([r["latency_ms"]["p50"] for r in runs]),
                "latency_p90_ms": t_interval([r["latency_ms"]["p90"] for r in runs]),
                "memory_mb": max(r["peak_rss_mb"] for r in runs),
                "energy_mj": float(np.mean(energies)) if None not in energies
                else Unavailable(runs[0].get("energy_reason") or "no energy probe on the agent")}


def _delegated(report: Mapping[str, Any]) -> float | Unavailable:
    coverage = report.get("coverage") or {}
    if "fraction" in coverage:
        return float(coverage["fraction"])
    return Unavailable(coverage.get("unavailable") or f"the {report.get('format')} converter reports no coverage")


def _violations(c: Candidate, constraints: Mapping[str, float], max_drop: float) -> tuple[str, ...]:
    out = [] if c.drop is not None and c.drop.value <= max_drop else [f"drop {c.drop.value:.4f} > max_drop {max_drop}"]
    limits = {"size_mb": c.size_mb, "memory_mb": c.memory_mb,
              "latency_ms": c.latency_p50_ms.value if c.latency_p50_ms else None}
    for key, limit in constraints.items():
        if key == "min_delegated":
            if isinstance(c.delegated, Unavailable):
                out.append(f"min_delegated: coverage {c.delegated}")
            elif c.delegated < limit:
                out.append(f"delegated {c.delegated:.3f} < min_delegated {limit}")
        elif limits[key] is not None and limits[key] > limit:
            out.append(f"{key} {limits[key]:.4g} > {limit}")
    return tuple(out)


def _pareto(measured: list[Candidate], objective: str) -> list[Candidate]:
    """Candidates no other one beats on both drop and the objective (ties kept once)."""
    points = [(c.drop.value, c.value(objective), c) for c in measured if c.value(objective) is not None]
    front = [c for d, v, c in points
             if not any(d2 <= d and v2 <= v and (d2 < d or v2 < v) for d2, v2, _ in points)]
    return sorted(front, key=lambda c: c.value(objective))


def _check(metric: str | Callable[..., float], max_drop: float, objective: str,
           constraints: Mapping[str, float]) -> None:
    if objective not in OBJECTIVES:
        raise UserInputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop < 1):  # NaN fails both comparisons
        raise UserInputError(f"max_drop is a fraction in [0, 1) (0.01 = one point of {metric}), got {max_drop!r}")
    for key, value in constraints.items():
        if key not in CONSTRAINTS:
            raise UserInputError(f"unknown constraint {key!r}; known: {', '.join(CONSTRAINTS)}")
        if not (isinstance(value, (int, float)) and value >= 0):
            raise UserInputError(f"constraint {key} must be a number >= 0, got {value!r}")


def optimize(model: torch.nn.Module, device: str, example_inputs: Sequence[torch.Tensor], *,
             eval_data: Iterable[Any], calibration: Iterable[Any] | None = None,
             metric: str | Callable[..., float] = "top1", max_drop: float = 0.01, objective: str = "latency",
             constraints: Mapping[str, float] | None = None, budget: Budget | None = None, agent: Any = "local",
             study: str | Path | None = None, output_dir: str | Path = "out/optimize", subset: int = 32,
             repeats: int = 3, iterations: int = 50, first: Sequence[tuple[str, str]] | None = None,
             tolerance: Any = None, mixed: bool = True, seed: int = 0,
             progress: Callable[[Candidate], None] | None = None) -> OptimizeResult:
    """Search the device's recipes for the one with the lowest `objective` whose `metric` drops by at most
    `max_drop` (absolute, in the metric's units: 0.01 = one point of top-1) from the runtime's plain fp32 export
    and that meets `constraints`.

    `eval_data` holds (inputs..., label) items as `sdk.export(eval_data=...)` takes them (a DataLoader works;
    batches are split to the export's batch 1), or inputs alone for a metric against the fp32 model
    ("agreement", "cosine"); `metric` is any sdk.metrics name or a callable (outputs, labels) -> float. `subset`
    of its samples are tried first. `study` is a SQLite file (default `<output_dir>/study.db`). Each candidate
    is benchmarked `repeats` times for a latency interval. A new study tries the (precision, pass) pairs in
    `first` before the sampler's own picks (default: every plain precision). With `mixed` (the default), a
    quantized candidate that misses `max_drop` is exported again with accuracy control: its most sensitive
    layers stay in float until the drop holds on the runtime (mixed precision from the per-layer sensitivity).
    `tolerance` (an sdk.Tolerance) goes to every export; by default each recipe's own parity tolerance applies,
    and a candidate that misses it is rejected with the reason. Example: docs/optimize.md.
    """
    import optuna

    import converters
    from sdk.pipeline import export

    started = time.perf_counter()
    constraints = dict(constraints or {})
    _check(metric, max_drop, objective, constraints)
    budget = budget or Budget()
    profile = devices.get(device)
    calib = list(calibration) if calibration is not None else None
    space = space_for(profile, converters.get(profile.format).supported, budget, calib is not None, mixed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S")
    data = eval_set(model, eval_data, example_inputs, metric)
    measure = _Measurer(_agent(agent), repeats, iterations)
    export_args = {"export": {"model": model, "device": profile.id, "example_inputs": example_inputs,
                              "calibration": calib, "tolerance": tolerance},
                   "control": {"eval_data": _items(data), "metric": data.metric, "max_drop": max_drop}}

    def build(recipe: Sequence[str], folder: Path, control: bool = False) -> Any:
        return export(**export_args["export"], **(export_args["control"] if control else {}), recipe=list(recipe),
                      output_dir=folder)

    log.info("optimize %s: fp32 baseline", profile.id)
    base_res = build(["fp32"], out / "baseline")
    base_out = outputs(base_res.artifact.path, data.inputs)
    baseline = Candidate(None, ("fp32",), "measured", metric=score(data, base_out).to_dict(),
                         drop=Estimate(0.0, 0.0, 0.0, "reference"),
                         size_mb=base_res.artifact.size_bytes / 1e6, delegated=_delegated(base_res.report), run=run_id,
                         bundle=str(base_res.artifact.path), **measure(base_res.artifact.path))
    if objective == "energy" and isinstance(baseline.energy_mj, Unavailable):
        raise UserInputError(f"objective='energy' but the agent cannot measure energy: {baseline.energy_mj.reason}")

    storage = f"sqlite:///{Path(study or out / 'study.db').resolve()}"
    sampler = optuna.samplers.TPESampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(storage=storage, study_name=f"{profile.id}-{data.metric.name}-{objective}",
                             sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True)
    if not st.trials:  # every plain precision first by default (fp32 is the baseline, measured anyway)
        for precision, pass_ in first or [(p, "none") for p in space.precisions if p != "fp32"]:
            if precision not in space.precisions or pass_ not in space.passes:
                raise UserInputError(f"first: ({precision!r}, {pass_!r}) is not in the search space for {profile.id} "
                                     f"(precisions: {', '.join(space.precisions)}; passes: {', '.join(space.passes)})")
            st.enqueue_trial({"precision": precision, "pass": pass_})
    rejected_early = 0

    def trial_fn(trial: optuna.Trial) -> tuple[float, float]:
        nonlocal rejected_early
        recipe = space.recipe(trial.suggest_categorical("precision", list(space.precisions)),
                              trial.suggest_categorical("pass", list(space.passes)))

        trial.set_user_attr("recipe", recipe)
        if tuple(recipe) == baseline.recipe:  # the baseline itself: already measured in this run
            trial.set_constraint("feasible", 0.0)
            return 0.0, baseline.value(objective)
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for past in trial.study.get_trials(deepcopy=False, states=done):
            if past.user_attrs.get("recipe") == recipe:  # proposed again: answer from the study, no new export
                trial.set_constraint("feasible", (past.constraints or {}).get("feasible", 1.0))
                if past.state == optuna.trial.TrialState.PRUNED:
                    raise optuna.TrialPruned(f"already tried in trial {past.number}")
                return tuple(past.values)

        def reject(reason: str) -> None:
            cand = Candidate(trial.number, tuple(recipe), "rejected", reason, run=run_id)
            trial.set_user_attr("candidate", cand.to_dict())
            trial.set_constraint("feasible", 1.0)
            if progress:
                progress(cand)
            raise optuna.TrialPruned(reason)

        def exported(control: bool) -> Any:
            try:
                return build(recipe, out / "trials" / f"{trial.number:03d}", control)
            except SdkError as exc:
                if isinstance(exc, ParityError) and not control and can_control:
                    return None  # accuracy control may still meet max_drop with layers in float
                how = " with accuracy control" if control else ""
                reject(f"export{how} failed: {str(exc).splitlines()[0][:300]}")

        can_control = space.mixed and _quantizes(recipe)
        res, full = exported(control=False), None
        if res is not None:
            head = data.head(subset)
            sub_out = outputs(res.artifact.path, head.inputs)
            sub = drop_between(head, base_out[:head.n], sub_out)
            if sub.ci_low <= max_drop:  # else it misses even at the low end of its interval (one flip is not enough)
                rest = [outputs(res.artifact.path, data.inputs[head.n:])] if data.n > head.n else []
                full = drop_between(data, base_out, np.concatenate([sub_out, *rest]))
        controlled = False
        if (full is None or full.value > max_drop) and can_control:
            log.info("trial %d: %s misses max_drop; exporting again with accuracy control", trial.number, recipe)
            res, controlled = exported(control=True), True
            full = drop_between(data, base_out, outputs(res.artifact.path, data.inputs))
        elif full is None:
            rejected_early += 1
            reject(f"pruned before device time: drop {sub.value:.4f} (95% CI from {sub.ci_low:.4f}) > {max_drop} "
                   f"on the first {head.n} samples")
        # the fallback's layers: kept for the default tolerance on held-out data, or by accuracy control for max_drop
        kept = (((res.report.get("quantization") or {}).get("fallback")) or {}).get("kept_float") or []
        cand = Candidate(trial.number, tuple(recipe), "measured", metric=full.candidate.to_dict(),
                         drop=Estimate(full.value, full.ci_low, full.ci_high,
                                       f"paired bootstrap over {full.candidate.n} items"),
                         size_mb=res.artifact.size_bytes / 1e6, delegated=_delegated(res.report), run=run_id,
                         kept_float=tuple(kept), controlled=controlled, bundle=str(res.artifact.path),
                         **measure(res.artifact.path))
        cand = dataclasses.replace(cand, violations=_violations(cand, constraints, max_drop))
        trial.set_user_attr("candidate", cand.to_dict())
        trial.set_constraint("feasible", 0.0 if cand.feasible else 1.0)
        if progress:
            progress(cand)
        value = cand.value(objective)
        if value is None:
            reject(f"objective {objective} not measured: {getattr(cand, OBJECTIVES[objective])}")
        return full.value, value

    def finished() -> int:
        return sum(t.state.is_finished() for t in st.trials)

    before = finished()
    todo = max(0, budget.trials - before)
    if todo:
        left_s = budget.minutes * 60 - (time.perf_counter() - started)
        st.optimize(trial_fn, n_trials=todo, timeout=max(1.0, left_s), catch=())
    baseline = dataclasses.replace(baseline, violations=_violations(baseline, constraints, max_drop))
    seen, candidates = {baseline.recipe}, []
    for t in st.trials:
        if "candidate" in t.user_attrs:
            cand = Candidate.from_dict(t.user_attrs["candidate"])
            if cand.recipe not in seen:
                seen.add(cand.recipe)
                candidates.append(cand)
    measured = [baseline, *(c for c in candidates if c.status == "measured")]
    feasible = [c for c in measured if c.feasible and c.value(objective) is not None]
    best = min(feasible, key=lambda c: (c.value(objective), c.drop.value)) if feasible else None
    why = None if best else "no candidate met max_drop and the constraints: " + "; ".join(
        f"{c.label}: {', '.join(c.violations) or 'objective not measured'}" for c in measured)
    cost = SearchCost(round((time.perf_counter() - started) / 60, 3), round(measure.device_s, 2),
                      finished() - before, finished(), rejected_early)
    result = OptimizeResult(best, _pareto(measured, objective), baseline, candidates, space, cost, objective,
                            data.metric.name, max_drop, constraints, out, why, export_args)
    from sdk.optimizer.report import write_report
    write_report(result)
    return result


def _quantizes(recipe: Sequence[str]) -> bool:
    """Whether the recipe's precision stores quantized weights (what accuracy control can keep in float)."""
    return parse(list(recipe))[-1].quantizes


def _items(data: EvalSet) -> list[tuple[torch.Tensor, ...]]:
    """The eval samples as `sdk.export(eval_data=...)` items: inputs, then the label where there is one."""
    if data.labels is None:
        return list(data.inputs)
    return [(*x, torch.from_numpy(np.asarray(label))) for x, label in zip(data.inputs, data.labels)]
