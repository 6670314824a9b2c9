"""`make bench`: real pretrained models x host-runnable targets x (torch eager, the runtime's default path,
each SDK recipe), measured in one run; writes out/bench/results.json, docs/benchmarks.md and docs/img/*.png.

    python benchmarks/run_all.py [--models efficientnet-lite0,minilm-l6,mobilenet-v2] [--targets ...]
                                 [--recipes fp32,int8,...] [--distill-steps 60] [--budget-min 27] [--fresh]

Two phases. Making: the compressed students (here) and every artifact (two worker processes), cached in
out/bench-cache under a hash of the code that made them. Measuring: with nothing else of ours running, torch
eager, each runtime's default path and each SDK bundle (through the agent), and agreement with torch fp32.
Every measurement is fresh in every run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import converters  # noqa: E402
import sdk  # noqa: E402
from benchmarks import default_path, harness_check, machine, measure, render  # noqa: E402
from benchmarks.exports import Cache, Task, error_text, init_worker, run_task, source_hash  # noqa: E402
from benchmarks.models import BUILDERS, Workload  # noqa: E402
from converters.passes.metrics import count_macs, count_params  # noqa: E402
from sdk.agent import LocalAgent  # noqa: E402
from sdk.core.recipes import Config, Distill  # noqa: E402

TARGETS = ("intel-cpu", "android-arm64", "android-litert", "jetson-orin-nano")
#: what actually runs on this host for each target format (the devices are not here)
HOST_RUN = {
    "openvino": "OpenVINO CPU plugin on this host (the profile's laptop CPU is not here)",
    "executorch": "ExecuTorch + XNNPACK on this x86 host, standing in for the phone's arm64 CPU",
    "litert": "LiteRT + XNNPACK on this x86 host, standing in for the phone's arm64 CPU",
    "onnx": "ONNX Runtime CPU on this host, standing in for TensorRT on the Jetson's GPU",
}
RUNTIME_NAME = {"openvino": "OpenVINO", "executorch": "ExecuTorch", "litert": "LiteRT", "onnx": "ONNX Runtime"}
WARMUP = 10
ITERATION_BUDGET_MS = 2500.0  # timed-loop length per row, from the torch eager latency
MIN_ITERATIONS, MAX_ITERATIONS = 30, 300
EXPORT_SHARE = 0.7  # of the time budget, for making artifacts; the rest is for measuring
#: code whose change invalidates an SDK artifact, a default-path artifact, a student
SDK_CODE = (Path("converters"), Path("sdk"), Path("benchmarks/models.py"), Path("benchmarks/exports.py"), Path("samples"))
DEFAULT_CODE = (Path("benchmarks/default_path.py"), Path("benchmarks/models.py"), Path("samples"))
PASS_CODE = (Path("converters/passes"), Path("sdk/compression.py"), Path("benchmarks/models.py"), Path("samples"))


@dataclass(frozen=True)
class Recipe:
    """An SDK row: passes (run once per model with sdk.compress) then one precision (exported per target)."""

    passes: tuple[str | Config, ...]
    precision: str

    @property
    def label(self) -> str:
        return "+".join(filter(None, [_passes_label(self.passes), self.precision]))

    @property
    def family(self) -> str:
        """fp32, int8, int8-dynamic, int4, lowrank or prune: what `--recipes` selects by."""
        return self.label.split(":")[0].split("+")[0]


def recipes(w: Workload, distill_steps: int, only: list[str] | None = None) -> list[Recipe]:
    """The SDK rows for `w` (int4 in blocks of 64, which every int4 target here takes); `only` keeps these families."""
    distill = Distill(steps=distill_steps, lr=w.distill_lr)
    every = [Recipe((), "fp32"), Recipe((), "int8"), *(Recipe((), p) for p in w.extra_precisions),
             Recipe((), "int4:64"), Recipe(("lowrank:0.5", distill), "int8"), Recipe(("prune:0.3", distill), "int8")]
    return [r for r in every if not only or r.family in only]


class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s
        self.wall_start = time.time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        m, s = divmod(int(self.elapsed()), 60)
        print(f"[{m:02d}:{s:02d}] {message}", flush=True)


def _iterations(torch_p50_ms: float) -> int:
    return int(min(MAX_ITERATIONS, max(MIN_ITERATIONS, ITERATION_BUDGET_MS / max(torch_p50_ms, 0.01))))


def _unsupported(profile: Any, precision: str) -> str | None:
    name = precision.split(":")[0]
    if name not in profile.precisions:
        return f"{profile.id} does not list {name} (its precisions: {', '.join(profile.precisions)})"
    supported = converters.get(profile.format).supported
    if name not in supported:
        return f"the {profile.format} converter does not do {name} yet (it does: {', '.join(sorted(supported))})"
    return None


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.clock = Clock(args.budget_min * 60)
        if args.fresh and args.cache.exists():
            shutil.rmtree(args.cache)
        self.cache = Cache(args.cache)
        self.workloads: dict[str, Workload] = {}
        self.references: dict[str, list] = {}
        self.inputs_files: dict[tuple[str, tuple[str, ...]], Path] = {}
        self.students: dict[tuple[str, tuple[str, ...]], str] = {}  # why a student is missing
        self.student_reports: list[dict[str, Any]] = []  # what sdk.compress reported for each student made
        self.made: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []

    # --- phase 1: make ---
    def make(self) -> None:
        deadline = self.clock.wall_start + self.args.budget_min * 60 * EXPORT_SHARE
        context = multiprocessing.get_context("spawn")
        log = self.cache.root / "export.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.clock.log(f"toolchain output of the export workers: {log}")
        with ProcessPoolExecutor(max_workers=self.args.workers, mp_context=context, initializer=init_worker,
                                 initargs=(str(log),)) as pool:
            pending = []

            def submit(tasks: list[Task]) -> None:
                for task in tasks:
                    future = pool.submit(run_task, task, self.cache.root, deadline)
                    future.add_done_callback(lambda f, task=task: self._made(task, f))
                    pending.append(future)
            for name in self.args.models:
                self.clock.log(f"{name}: building the model and its inputs")
                w = self.workloads[name] = BUILDERS[name]()
                self.references[name] = measure.reference_outputs(w.model, w.eval_inputs)
                self.inputs_files[(name, ())] = self._save_inputs(w, w.model, ())
                submit(self._tasks(w, ()))
            for name in self.args.models:  # students while the workers export
                w = self.workloads[name]
                for passes in dict.fromkeys(r.passes for r in recipes(w, self.args.distill_steps, self.args.recipes)
                                            if r.passes):
                    if self._student(w, passes, deadline):
                        submit(self._tasks(w, passes))
            wait(pending)

    def _made(self, task: Task, future: Future) -> None:
        try:
            outcome = future.result()
        except Exception as exc:  # a worker that died (e.g. a toolchain crash takes the process down)
            outcome = {"status": f"failed: export worker: {error_text(exc)}"}
        self.made[(task.model, task.target, task.label)] = outcome
        detail = ("cached" if outcome.get("cached") else f"{outcome['export_s']:.0f} s") \
            if outcome["status"] == "ok" else outcome["status"]
        self.clock.log(f"made {task.model} {task.target} {task.label}: {detail}")

    def _save_inputs(self, w: Workload, model: torch.nn.Module, passes: tuple[str, ...]) -> Path:
        path = self.cache.root / w.name / f"inputs-{_passes_label(passes) or 'original'}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model, "example_inputs": w.example_inputs, "calibration": w.calibration}, path)
        return path

    def _tasks(self, w: Workload, passes: tuple[str, ...]) -> list[Task]:
        """Every artifact of `w` that needs the model after `passes` (none: the original)."""
        tasks = []
        inputs_file = self.inputs_files[(w.name, passes)]
        for target in self.args.targets:
            profile = sdk.devices.get(target)
            if not passes:
                tasks.append(Task(w.name, target, "default", inputs_file, f"{w.name}/{target}/default",
                                  source_hash(*DEFAULT_CODE, w.name, profile.format)))
            for r in recipes(w, self.args.distill_steps, self.args.recipes):
                if r.passes != passes or _unsupported(profile, r.precision):
                    continue
                tasks.append(Task(w.name, target, r.label, inputs_file, f"{w.name}/{target}/{r.label.replace(':', '_')}",
                                  source_hash(*SDK_CODE, w.name, target, r.label), precision=r.precision))
        return tasks

    def _student(self, w: Workload, passes: tuple[str, ...], deadline: float) -> bool:
        """Compress + distill once per model (every target exports the student); False (reason kept) if it failed."""
        label = _passes_label(passes)
        if time.time() > deadline:
            self.students[(w.name, passes)] = "skipped: over the time budget"
            return False
        start = time.perf_counter()

        def make(folder: Path) -> None:
            compressed = sdk.compress(_for_distill(w), list(passes), example_inputs=w.example_inputs,
                                      calibration=w.train_batches)
            (folder / "passes.json").write_text(json.dumps(compressed.edge_sdk_report, default=str))
            torch.save(_from_distill(compressed), folder / "student.pt")
        try:
            folder, cached = self.cache.get(f"{w.name}/student-{label}", source_hash(*PASS_CODE, w.name, *passes), make)
        except Exception as exc:  # a pass that cannot handle this model: every row that needs it says why
            self.students[(w.name, passes)] = f"failed: {label}: {error_text(exc)}"
            self.clock.log(f"{w.name}: {self.students[(w.name, passes)]}")
            return False
        self.clock.log(f"{w.name}: {label} {'(cached)' if cached else f'in {time.perf_counter() - start:.0f} s'}")
        student = torch.load(folder / "student.pt", weights_only=False).eval()
        self.student_reports.append({"model": w.name, "model_title": w.title, "passes": label,
                                     **_student_summary(json.loads((folder / "passes.json").read_text()))})
        self.inputs_files[(w.name, passes)] = self._save_inputs(w, student, passes)
        return True

    # --- phase 2: measure ---
    def measure(self) -> None:
        agent = LocalAgent()
        for name in self.args.models:
            w, reference = self.workloads[name], self.references[name]
            estimate = measure.torch_eager(w.model, w.example_inputs, warmup=3, iterations=10, threads=1)
            iterations = _iterations(estimate["latency_ms"]["p50"])
            info = {"params": count_params(w.model), "macs": count_macs(w.model, w.example_inputs)}
            common = {"model": name, "model_title": w.title, "metric": w.metric}
            base = measure.torch_eager(w.model, w.example_inputs, warmup=WARMUP, iterations=iterations)
            one = measure.torch_eager(w.model, w.example_inputs, warmup=WARMUP, iterations=iterations, threads=1)
            # the faster of the two is the baseline: on a busy machine torch's spinning OpenMP threads can make
            # its default much slower than one thread, which would inflate every speedup
            torch_p50 = min(base["latency_ms"]["p50"], one["latency_ms"]["p50"])
            self.clock.log(f"{name}: torch eager p50 {base['latency_ms']['p50']:.2f} ms, 1 thread "
                           f"{one['latency_ms']['p50']:.2f} ms ({iterations} iterations per row)")
            for kind, b in (("baseline", base), ("baseline-1t", one)):
                self._add({**common, "target": None, "kind": kind, "status": "ok", "source": w.source,
                           "row": "torch eager fp32" + (" (1 thread)" if kind == "baseline-1t" else ""),
                           "params": info["params"], "macs": info["macs"], "size_bytes": _state_dict_bytes(w.model),
                           "latency_ms": b["latency_ms"], "ran_on": b["ran_on"], "speedup": torch_p50 / b["latency_ms"]["p50"],
                           "agreement": measure.agreement(w.metric, reference, reference)})
            for target in self.args.targets:
                profile = sdk.devices.get(target)
                self._default_row(w, profile, reference, info, torch_p50, iterations, common)
                for recipe in recipes(w, self.args.distill_steps, self.args.recipes):
                    self._sdk_row(agent, w, profile, recipe, reference, torch_p50, iterations, common)

    def _default_row(self, w: Workload, profile: Any, reference: list, info: dict, torch_p50: float, iterations: int,
                     common: dict) -> None:
        fmt = profile.format
        row = {**common, "target": profile.id, "kind": "default", "row": f"{RUNTIME_NAME[fmt]} default",
               "how": default_path.DESCRIPTION[fmt], "params": info["params"], "macs": info["macs"]}
        made = self.made.get((w.name, profile.id, "default"), {"status": "skipped: over the time budget"})
        if made["status"] != "ok":
            self._add({**row, "status": made["status"]})
            return
        model_file = self.cache.root / w.name / profile.id / "default" / default_path.FILES[fmt]
        result = default_path.measure(fmt, model_file, [t.numpy() for t in w.example_inputs],
                                      [[t.numpy() for t in x] for x in w.eval_inputs], warmup=WARMUP,
                                      iterations=iterations)
        if "error" in result:
            self._add({**row, "status": f"failed: {result['error']}"})
            return
        size, lat = default_path.size_bytes(model_file), result["latency_ms"]
        bound = profile.roofline_ms(info["macs"], size, "fp32")
        compute_ms = 2 * info["macs"] / (profile.peak_tops["fp32"] * 1e12) * 1e3 if bound else None
        self._add({**row, "status": "ok", "size_bytes": size, "latency_ms": lat, "ran_on": result["ran_on"],
                   "speedup": torch_p50 / lat["p50"], **_made(made),
                   "agreement": measure.agreement(w.metric, result["outputs"], reference),
                   "roofline": {"bound_ms": bound, "peak_key": "fp32", "ratio": lat["p50"] / bound if bound else None,
                                "bound_by": ("compute" if compute_ms >= bound else "memory") if bound else None}})

    def _sdk_row(self, agent: LocalAgent, w: Workload, profile: Any, recipe: Recipe, reference: list,
                 torch_p50: float, iterations: int, common: dict) -> None:
        row = {**common, "target": profile.id, "kind": "sdk", "row": recipe.label}
        reason = _unsupported(profile, recipe.precision)
        if reason:
            self._add({**row, "status": f"unsupported: {reason}"})
            return
        if recipe.passes and (w.name, recipe.passes) in self.students:
            self._add({**row, "status": self.students[(w.name, recipe.passes)]})
            return
        made = self.made.get((w.name, profile.id, recipe.label), {"status": "skipped: over the time budget"})
        if made["status"] != "ok":
            self._add({**row, "status": made["status"]})
            return
        bundle = self.cache.root / w.name / profile.id / recipe.label.replace(":", "_") / profile.id
        report = sdk.load_artifact(bundle).report
        try:
            r = agent.benchmark(bundle, warmup=WARMUP, iterations=iterations, idle_s=1.0, energy=True)
            if not r.ran:
                self._add({**row, "status": f"not run here: {r.reason}"})
                return
            outputs = measure.bundle_outputs(bundle, w.eval_inputs)
        except Exception as exc:
            self._add({**row, "status": f"failed: run: {error_text(exc)}"})
            return
        lat = r.latency_ms.to_dict()
        roof = dict(report["roofline"])
        roof["ratio"] = lat["p50"] / roof["bound_ms"] if roof.get("bound_ms") else None
        self._add({**row, "status": "ok", "size_bytes": report["artifact"]["size_bytes"],
                   "params": report["model"]["params_final"], "macs": report["model"]["macs_final"],
                   "latency_ms": lat, "ran_on": r.ran_on, "speedup": torch_p50 / lat["p50"], **_made(made),
                   "agreement": measure.agreement(w.metric, outputs, reference),
                   "reference_check": (r.parity or {}).get("passed"), "roofline": roof,
                   "energy": {"value": r.energy.to_dict() if r.energy else None, "reason": r.energy_reason},
                   "float_layers": len((report.get("quantization") or {}).get("float_layers") or [])})

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        where = f"{row['model']} {row['target'] or 'host'} {row['row']}"
        if row["status"] != "ok":
            self.clock.log(f"{where}: {row['status']}")
            return
        agree = row["agreement"]
        shown = f"top-1 {agree['value']:.1%}" if agree["metric"] == "top1" else f"cosine {agree['value']:.5f}"
        self.clock.log(f"{where}: p50 {row['latency_ms']['p50']:.2f} ms ({row['speedup']:.2f}x torch), {shown}, "
                       f"{row['size_bytes'] / 1e6:.2f} MB")

    # --- harness check ---
    def harness(self) -> list[dict[str, Any]]:
        """Agent vs the runtime's own tool on the first model's fp32 bundle of each target."""
        checks: list[dict[str, Any]] = []
        for target in self.args.targets if self.args.harness_rounds > 0 else ():
            profile = sdk.devices.get(target)
            model = next((r["model"] for r in self.rows if r["target"] == target and r["row"] == "fp32"
                          and r["status"] == "ok"), None)
            if model is None:
                continue
            self.clock.log(f"harness check on {target} ({model} fp32)")
            try:
                result = harness_check.check(self.cache.root / model / target / "fp32" / target,
                                             rounds=self.args.harness_rounds, iterations=100)
            except Exception as exc:
                result = {"runtime": profile.runtime, "tool": harness_check.TOOLS.get(profile.runtime),
                          "reason": f"failed: {error_text(exc)}"}
            checks.append({"target": target, "model": model, **result})
            if result.get("ratio_median"):
                self.clock.log(f"  agent / {result['tool']} {result['statistic']}: {result['ratio_median']:.3f}")
        return checks


def _passes_label(passes: tuple[str | Config, ...]) -> str:
    return "+".join(p if isinstance(p, str) else p.to_string() for p in passes)


def _student_summary(report: dict[str, Any]) -> dict[str, Any]:
    """From sdk.compress's report: size before and after, and the distillation's held-out parity before and after."""
    passes = report["passes"]
    distill = next((p for p in passes if p["pass"].startswith("distill")), {})

    def parity(key: str) -> dict[str, Any] | None:
        outputs = (distill.get(key) or {}).get("outputs") or []
        return {"cosine": outputs[0].get("cosine"), "top1": outputs[0].get("top1_agreement")} if outputs else None
    return {"params": [passes[0]["params_before"], passes[-1]["params_after"]],
            "macs": [passes[0].get("macs_before"), passes[-1].get("macs_after")],
            "distill": {"steps": distill.get("steps"), "lr": distill.get("lr"), "train_samples": distill.get("train_samples"),
                        "heldout_samples": distill.get("heldout_samples"), "loss": distill.get("loss"),
                        "loss_first": distill.get("loss_first"), "loss_last": distill.get("loss_last"),
                        "before": parity("parity_before"), "after": parity("parity_after")}}


def _made(made: dict[str, Any]) -> dict[str, Any]:
    return {"export_s": made.get("export_s"), "cached": made.get("cached")}


class _EmbeddingRows(torch.nn.Module):
    """Shows an embedding model's (batch, dim) output as (batch, 1, dim) to the distill pass, which takes any 2-D
    output for classifier logits (KL loss); embeddings need its MSE loss."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(*inputs).unsqueeze(1)


def _for_distill(w: Workload) -> torch.nn.Module:
    return _EmbeddingRows(w.model) if w.metric == "cosine" else w.model


def _from_distill(compressed: torch.nn.Module) -> torch.nn.Module:
    return compressed.inner if isinstance(compressed, _EmbeddingRows) else compressed


def _state_dict_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUILDERS), help=f"comma-separated, of {', '.join(BUILDERS)}")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--recipes", default="",
                        help="keep only these SDK rows: fp32, int8, int8-dynamic, int4, lowrank, prune")
    parser.add_argument("--distill-steps", type=int, default=60)
    parser.add_argument("--budget-min", type=float, default=27.0,
                        help=f"artifacts not made within {EXPORT_SHARE:.0%} of this are reported as skipped")
    parser.add_argument("--workers", type=int, default=2, help="processes making artifacts in parallel")
    parser.add_argument("--harness-rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "bench-cache")
    parser.add_argument("--fresh", action="store_true", help="delete the artifact cache first")
    parser.add_argument("--results", type=Path, default=ROOT / "out" / "bench" / "results.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md and img/ are written")
    args = parser.parse_args(argv)
    args.models, args.targets = args.models.split(","), args.targets.split(",")
    args.recipes = [r for r in args.recipes.split(",") if r]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # Untimed torch work here (references, distillation) runs on one thread, beside the export workers; the
    # torch eager rows are timed with torch's default thread count and with one thread (measure.torch_eager).
    with measure.torch_threads(1):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    started = machine.describe()
    bench.clock.log(f"{started['cpu']}, {started['usable_cpus']} CPUs, load average {started['load_average']}")
    bench.make()
    made_s = bench.clock.elapsed()
    load_measuring = machine.describe()["load_average"]
    bench.clock.log(f"all artifacts made; measuring (load average {load_measuring})")
    bench.measure()
    checks = bench.harness()
    results = {"machine": started, "load_average_measuring": load_measuring,
               "load_average_end": machine.describe()["load_average"], "make_s": made_s,
               "total_s": bench.clock.elapsed(), "budget_s": bench.clock.budget_s, "distill_steps": args.distill_steps,
               "targets": {t: HOST_RUN[sdk.devices.get(t).format] for t in args.targets},
               "rows": bench.rows, "harness": checks, "students": bench.student_reports, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=str))
    render.write(results, args.docs)
    bench.clock.log(f"done in {results['total_s'] / 60:.1f} min: {args.results}, {args.docs / 'benchmarks.md'}")
    return results


if __name__ == "__main__":
    main()
