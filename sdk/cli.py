"""`edge-sdk` command line: devices, export, inspect, optimize (and the agent/bench/test commands).

Errors print one paragraph and exit non-zero; `--debug` shows the traceback.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from sdk import devices, preflight, recipe_file
from sdk.agent.spec import RunSpec
from sdk.core.errors import AccuracyError, SdkError, UserInputError
from sdk.progress import Progress, key_for, quiet_third_party_bars
from sdk.summary import WIDTH, DeviceOutcome, compact_lines, fmt_size, write_summary

app = typer.Typer(help="Export PyTorch models to validated, device-ready artifacts.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
devices_app = typer.Typer(help="List and show device profiles.", invoke_without_command=True)
app.add_typer(devices_app, name="devices")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


@devices_app.callback()
def devices_list(ctx: typer.Context) -> None:
    """List every registered device profile."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="Device profiles (edge-sdk devices show ID for details)")
    table.add_column("id", no_wrap=True, style="bold")
    for col in ("aliases", "format", "runtime", "precisions", "default"):
        table.add_column(col)
    for p in devices.list():
        table.add_row(p.id, ", ".join(p.aliases), p.format, p.runtime, ", ".join(p.precisions), ", ".join(p.default_recipe))
    console.print(table)


@devices_app.command("show", epilog="Example:\n\n  edge-sdk devices show jetson")
def devices_show(name: str = typer.Argument(..., help="Device id or alias, e.g. jetson")) -> None:
    """Show one profile in full, with the sources of its figures."""
    profile = devices.get(name)
    table = Table(title=f"{profile.id}: {profile.name}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in profile.to_dict().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = "\n".join(value) if key == "sources" else ", ".join(value)
        table.add_row(key, str(value))
    console.print(table)


def _load_attr(spec: str, what: str) -> Any:
    """Import `path/to/file.py:attr` (or `package.module:attr`) and return the attribute."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserInputError(f"{what} must look like path/to/file.py:name or package.module:name, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise UserInputError(f"{what}: file {target} does not exist")
        # Import it the way python would from its package root, so its own package imports work.
        root, parts = path.parent, [path.stem]
        while (root / "__init__.py").is_file():
            parts.insert(0, root.name)
            root = root.parent
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        module = importlib.import_module(".".join(parts))
    else:
        module = importlib.import_module(target)
    if not hasattr(module, attr):
        defined = [n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                   and getattr(v, "__module__", None) == module.__name__]
        raise UserInputError(f"{what}: {target} has no attribute {attr!r}; it defines: "
                             f"{', '.join(defined) or 'no functions or classes'}")
    return getattr(module, attr), module


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UserInputError(f"--shape must look like 1x3x224x224, got {text!r}") from None


def _model_and_inputs(spec: str, shapes: list[str]) -> tuple[Any, tuple]:
    import torch

    builder, module = _load_attr(spec, "model")
    built = builder() if callable(builder) and not isinstance(builder, torch.nn.Module) else builder
    model, inputs = built if isinstance(built, tuple) else (built, None)
    if shapes:
        inputs = tuple(torch.randn(*_parse_shape(s)) for s in shapes)
    elif inputs is None and hasattr(module, "example_inputs"):
        inputs = module.example_inputs()
    if inputs is None:
        raise UserInputError(f"{spec}: give input shapes with --shape 1x3x224x224 (repeat for several inputs), "
                             "or define example_inputs() in the model file")
    return model, tuple(inputs)


@contextlib.contextmanager
def _toolchain_output(keep: bool):
    """Send whatever the toolchains print to stderr (C++ logs, forced progress bars) to a file, unless `keep`.

    On an error the tail is shown, since it may hold the toolchain's own explanation.
    """
    if keep:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            tail = sink.read()[-3000:].decode(errors="replace").strip()
            if tail:
                err_console.print(f"[dim]toolchain output (last lines):\n{tail}[/dim]", highlight=False, markup=True)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@app.command("export", epilog="Examples:\n\n  edge-sdk export samples.mobilenet_v2:build -d android --out out/\n\n"
             "  edge-sdk export my_model.py:build -d intel-cpu -d jetson --recipe int8 --calibration my_data.py:loader"
             "\n\n  edge-sdk export --config recipe.toml")
def export_cmd(
    model: Optional[str] = typer.Argument(None, help="Model factory: path/to/file.py:build or package.module:build "
                                          "(returns an nn.Module or (model, inputs))"),
    device: list[str] = typer.Option([], "--device", "-d", help="Device id or alias; repeat, or 'all'"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Output folder (default out); bundles go to OUT/<device-id>/"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Comma-separated recipe, e.g. "
                                         "lowrank:0.5,distill,int8; 'auto': a short sdk.optimize search per device"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration data: file.py:loader (iterable of input tuples)"),
    shape: list[str] = typer.Option([], "--shape", help="Input shape like 1x3x224x224 (repeat per input)"),
    validate: Optional[bool] = typer.Option(None, "--validate/--no-validate",
                                            help="Run the artifact here and check parity (default: yes)"),
    agent: Optional[str] = typer.Option(None, "--agent", help="Validate on a remote agent at this URL instead of here"),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Parity tolerance; with a quantized recipe "
                                               "the most sensitive layers stay in float until it is met"),
    task: Optional[str] = typer.Option(None, "--task", help="'text-generation': a causal LM (the factory returns it; "
                                       "--calibration gives token-id lists), exported with a static KV cache"),
    max_seq_len: int = typer.Option(512, "--max-seq-len", help="KV cache length for --task text-generation"),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file with any of these options (model, "
                                          "device, recipe, calibration, ...); flags given here win"),
    eval_data: Optional[str] = typer.Option(None, "--eval", help="Eval data: file.py:loader ((inputs..., label) "
                                            "items) for --metric; --recipe auto without it: agreement on "
                                            "--calibration"),
    metric: Optional[str] = typer.Option(None, "--metric", help="top1, top5, spearman, agreement, cosine (default "
                                         "top1 with --eval)"),
    max_drop: Optional[str] = typer.Option(None, "--max-drop", help="Largest metric drop allowed, like 1% or 0.01 "
                                           "(with --metric; --recipe auto: default 1%)"),
) -> None:
    """Export a model to one or more devices: one line per device, report.html in each bundle."""
    spec = recipe_file.merge(config, model=model, device=device, out=out, recipe=recipe, calibration=calibration,
                             shape=shape, validate=validate, agent=agent, min_cosine=min_cosine)
    model, device, out, recipe, calibration, shape, agent, min_cosine = (
        spec.model, list(spec.device), Path(spec.out or "out"), spec.recipe, spec.calibration, list(spec.shape),
        spec.agent, spec.min_cosine)
    validate = spec.validate is not False
    auto = recipe == "auto"
    targets = preflight.check_cli_export(model, device, recipe=None if auto else recipe, calibration=calibration,
                                         out=out, min_cosine=min_cosine, agent=agent)  # before torch and the model
    if auto and not (eval_data or calibration):
        raise UserInputError("--recipe auto searches recipes against a metric: give --eval file.py:loader "
                             "((inputs..., label) items, with --metric), or --calibration for agreement with fp32")
    import sdk

    if task is not None:
        builder, _ = _load_attr(model, "model")
        net, inputs = (builder() if callable(builder) and not hasattr(builder, "config") else builder), None
    else:
        net, inputs = _model_and_inputs(model, shape)
    calib = None
    if calibration:
        calib, _ = _load_attr(calibration, "calibration")
        calib = calib() if callable(calib) else calib
    if task is not None:
        return _export_llm(net, model, targets, task=task, recipe=recipe, calibration=calib, out=out,
                           validate=validate, max_seq_len=max_seq_len)
    tolerance = sdk.Tolerance(min_cosine=min_cosine) if min_cosine is not None else None
    labeled = None
    if eval_data:
        labeled, _ = _load_attr(eval_data, "--eval")
        labeled = labeled() if callable(labeled) else labeled
    metric = metric or ("top1" if labeled is not None else "agreement" if auto else None)
    drop = _fraction(max_drop, "--max-drop") if max_drop else 0.01 if auto else None
    searched = {}  # --recipe auto: each device's search, whose best is then exported below
    for target in targets if auto else ():
        res = searched[target] = _auto_recipe(net, target, inputs, calib, labeled, metric, drop, out, tolerance)
        console.print(f"{target}: chosen by the search: [bold]{res.best.label}[/bold] "
                          f"({res.speedup(res.best):.2f}x the fp32 export's p50, drop {res.best.drop}); "
                      f"search report: {res.output_dir / 'report.html'}", highlight=False)
    outcomes: list[DeviceOutcome] = []
    interactive = console.is_terminal
    with console.status("starting") as status, _toolchain_output(keep=_state["debug"]):
        for target in targets:
            try:
                with Progress(key_for(target, recipe), show=status.update) as tracker:
                    if auto:
                        res = searched[target].export(out)
                    else:
                        res = sdk.export(net, target, inputs, recipe=recipe, calibration=calib, output_dir=out,
                                         validate=agent or validate, tolerance=tolerance, eval_data=labeled,
                                         metric=metric, max_drop=drop)
                if interactive:  # the estimate's history is this user's own runs at a terminal
                    tracker.done(res.report["timings_s"]["total_s"])
                outcomes.append(DeviceOutcome.from_report(res.report, res.artifact.path))
            except SdkError as exc:
                if len(targets) == 1:
                    raise
                outcomes.append(DeviceOutcome.from_error(target, devices.get(target).format, exc))
    _print_outcomes(model, outcomes, out)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _auto_recipe(net: Any, target: str, inputs: Any, calib: Any, labeled: Any, metric: str, max_drop: float,
                 out: Path, tolerance: Any) -> Any:
    """A short sdk.optimize search (Budget(trials=8, minutes=10)) on the local agent, progress per trial."""
    import sdk

    if labeled is None:  # agreement with the fp32 model on the calibration data's held-out part
        from sdk.quantization import hold_out

        calib, labeled = hold_out(list(calib))
    console.print(f"{target}: searching recipes ({metric}, max drop {max_drop:g}; Budget(trials=8, minutes=10))",
                  highlight=False)
    with _toolchain_output(keep=_state["debug"]):
        res = sdk.optimize(net, target, inputs, eval_data=labeled, calibration=calib, metric=metric,
                           max_drop=max_drop, budget=sdk.Budget(trials=8, minutes=10), tolerance=tolerance,
                           output_dir=out / "optimize" / target, progress=_print_trial)
    if res.best is None:
        raise AccuracyError(f"{target}: --recipe auto found no recipe within --max-drop {max_drop:g}: {res.why}")
    return res


def _print_trial(c: Any) -> None:
    """One line per optimize trial."""
    if c.status != "measured":
        console.print(f"trial {c.trial}: {c.label}: [yellow]{c.reason}[/yellow]", highlight=False)
        return
    unmet = "" if c.feasible else f" ({'; '.join(c.violations)})"
    console.print(f"trial {c.trial}: {c.label}: drop {c.drop.value:+.4f}, p50 {c.latency_p50_ms} ms, "
                  f"{c.size_mb:.3f} MB{unmet}", highlight=False)


def _print_outcomes(model: str, outcomes: list[DeviceOutcome], out: Path) -> None:
    """One line per device, the long reasons once below; several devices also get out/summary.{json,html}."""
    width = min(console.width, WIDTH)

    def say(text: str, indent: str = "") -> None:
        console.print(textwrap.fill(text, width=width, subsequent_indent=indent or "  "), highlight=False,
                      markup=False, soft_wrap=True)

    lines, notes = compact_lines(outcomes)
    say(f"export of {model} (p50 latency where each bundle ran: see the notes)")
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for i, note in enumerate(notes, 1):
        say(f"[{i}] {note}", indent="    ")
    where = f"bundles in {out}/, report.html in each"
    if len(outcomes) > 1:
        _, page = write_summary(out, outcomes, f"export of {model}")
        where += f"; summary: {page} and {page.with_suffix('.json').name}"
    say(where)


def _summary_row(report: dict, path: Path) -> list[str]:
    parity = report["parity"]
    if parity["passed"] is None:
        parity_text = f"[yellow]not run[/yellow]: {parity['reason']}"
    else:
        cos = min(o["cosine"] for o in parity["outputs"])
        parity_text = f"{'[green]pass' if parity['passed'] else '[red]FAIL'}[/] cos={cos:.6f} ({parity['ran_on']})"
    latency = report["validation"].get("latency_ms")
    return [report["device"], report["format"], fmt_size(report["artifact"]["size_bytes"]), parity_text,
            f"{latency['p50']:.2f} ms" if latency else "-", str(path)]


def _llm_row(report: dict, path: Path) -> list[str]:
    """An LLM export's row: quality in place of parity, decode tokens/s in place of latency."""
    llm = report["llm"]
    if not llm.get("ran"):
        return [report["device"], report["format"], fmt_size(report["artifact"]["size_bytes"]),
                f"[yellow]not run[/yellow]: {llm.get('reason')}", "-", str(path)]
    q = llm.get("quality")
    quality = (f"top-1 agree {q['top1_agreement']:.2f}, ppl {q['perplexity_artifact']:.2f} vs fp32 "
               f"{q['perplexity_fp32']:.2f}" if q else f"[yellow]{llm.get('quality_reason')}[/yellow]")
    decode = llm["prompts"][0]["decode_tok_s"]
    return [report["device"], report["format"], fmt_size(report["artifact"]["size_bytes"]), quality,
            f"{decode:.1f} tok/s decode" if decode else "-", str(path)]


def _export_llm(net: Any, model: str, targets: list[str], **kwargs: Any) -> None:
    """`export --task text-generation`: one row per device with quality and decode speed (see docs/llm.md)."""
    import sdk

    table = Table(title=f"Export of {model} (text-generation)")
    for col in ("device", "format", "size", "quality vs fp32", "decode (here)", "bundle"):
        table.add_column(col)
    out = kwargs.pop("out")
    with console.status("exporting"), _toolchain_output(keep=_state["debug"]):
        for target in targets:
            res = sdk.export(net, target, output_dir=out, **kwargs)
            table.add_row(*_llm_row(res.report, res.artifact.path))
    console.print(table)


def _is_llm_bundle(path: Path) -> bool:
    manifest = path / "manifest.json"
    return manifest.is_file() and "llm" in json.loads(manifest.read_text())


def _llm_bench(bundles: list[Path], prompt_len: str, new_tokens: int, as_json: bool) -> None:
    from sdk.agent import LocalAgent

    try:
        lengths = [int(n) for n in prompt_len.split(",") if n.strip()]
    except ValueError:
        raise UserInputError(f"--prompt-len takes comma-separated integers, e.g. 64,512; got {prompt_len!r}") from None
    results = []
    with console.status("generating"):
        for bundle in bundles:
            results.append(LocalAgent().llm_benchmark(bundle, prompt_lens=lengths, new_tokens=new_tokens).to_dict())
    if as_json:
        console.print_json(json.dumps(results, default=str))
        return
    table = Table(title=f"LLM generation on this machine ({new_tokens} new tokens)")
    for col in ("bundle", "ran on", "prompt", "TTFT ms", "prefill tok/s", "decode tok/s", "token p50/p90/p99 ms",
                "peak RSS MB", "energy / token"):
        table.add_column(col)
    for bundle, r in zip(bundles, results):
        energy = (f"{r['energy_per_token_mj']:.3f} mJ" if r["energy_per_token_mj"] is not None
                  else f"n/a: {(r['energy_reason'] or '').split(':')[0]}")
        for p in r["prompts"]:
            lat = p["token_latency_ms"] or {}
            table.add_row(str(bundle), r["ran_on"], str(p["prompt_len"]), f"{p['ttft_ms']:.1f}",
                          f"{p['prefill_tok_s']:.0f}", f"{p['decode_tok_s'] or 0:.1f}",
                          "/".join(f"{lat[k]:.2f}" for k in ("p50", "p90", "p99")) if lat else "-",
                          f"{r['peak_rss_mb']:.0f}", energy)
    console.print(table)


@app.command("inspect", epilog="Examples:\n\n  edge-sdk inspect out/android-arm64/\n\n"
             "  edge-sdk inspect out/android-arm64/ --json")
def inspect_cmd(path: Path = typer.Argument(..., help="Bundle folder, e.g. out/android-arm64/"),
                as_json: bool = typer.Option(False, "--json", help="Print manifest and report as JSON")) -> None:
    """Show a bundle's manifest and report, after checking its files against their sha256."""
    import sdk

    art = sdk.load_artifact(path)
    art.verify()
    if as_json:
        console.print_json(json.dumps({"manifest": art.manifest, "report": art.report}, default=str))
        return
    m, r = art.manifest, art.report
    table = Table(title=f"{path}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("device / format / runtime", f"{m['device']} / {m['format']} / {m['runtime']}")
    table.add_row("model file", f"{m['model_file']} ({fmt_size(art.size_bytes)}), files verified (sha256)")
    table.add_row("recipe", ", ".join(m["recipe"]))
    for kind in ("inputs", "outputs"):
        table.add_row(kind, "\n".join(f"{t['name']}: {t['shape']} {t['dtype']}" for t in m[kind]))
    table.add_row("created", f"{m['created']} (sdk {m['sdk_version']}, schema {m['schema_version']})")
    if r:
        row = _summary_row(r, path)
        table.add_row("parity", row[3])
        table.add_row("host latency p50", row[4])
        cov = r.get("coverage") or {"unavailable": "the converter does not say"}
        table.add_row("coverage", f"unknown: {cov['unavailable']}" if "unavailable" in cov else _coverage_table(cov))
        if (path / "report.html").is_file():
            table.add_row("report", f"{path / 'report.html'} (plots: latency, sensitivity, coverage, size)")
        table.add_row("verdict", f"{r['verdict']['status']}: " + ", ".join(f"{k}={v}" for k, v in r["verdict"]["checks"].items()))
    console.print(table)


def _coverage_table(cov: dict) -> Table:
    """Delegate coverage as rows: what ran on the delegate, then each op that fell back with its count and reason."""
    table = Table(show_header=True, box=None, pad_edge=False)
    for col in ("where", cov.get("unit", "nodes"), "why"):
        table.add_column(col)
    table.add_row(str(cov.get("delegate")), f"{cov.get('delegated')} of {cov.get('total')}",
                  f"{cov.get('fraction', 0):.1%} of the graph")
    reasons = cov.get("reasons") or {}
    for op, n in sorted((cov.get("not_delegated") or {}).items(), key=lambda kv: -kv[1]):
        table.add_row(f"fell back: {op}", str(n), str(reasons.get(op, "")))
    for key, value in (cov.get("details") or {}).items():
        table.add_row(key.replace("_", " "), str(value), "")
    return table


agent_app = typer.Typer(help="Run the test agent on a device.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(importlib.import_module("sdk.farm.cli").farm_app, name="farm")


@agent_app.command("serve", epilog="Example (on the device):\n\n"
                   "  edge-sdk agent serve --host 0.0.0.0 --port 8765 --token $TOKEN")
def agent_serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything beyond loopback needs --token"),
    port: int = typer.Option(8765, help="TCP port"),
    token: Optional[str] = typer.Option(None, envvar="EDGE_SDK_AGENT_TOKEN", help="Bearer token clients must send"),
    data_dir: Path = typer.Option(Path("~/.edge-sdk/agent"), help="Where jobs, uploads and results are kept (SQLite)"),
    max_upload_mb: float = typer.Option(512.0, help="Largest bundle upload accepted"),
    adb_serial: Optional[str] = typer.Option(None, "--adb-serial", help="Drive this Android phone over adb"),
    runner: Optional[Path] = typer.Option(None, "--runner", help="Runner binary pushed to the phone (e.g. executor_runner)"),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate (PEM)"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Private key of --tls-cert (PEM)"),
    max_queued: int = typer.Option(50, help="Jobs that may wait; beyond it submissions get 429 with Retry-After"),
    min_free_mb: float = typer.Option(1024.0, help="Disk kept free; an upload that would eat into it gets 507"),
    retention_days: float = typer.Option(30.0, help="Finished jobs and their results are deleted after this"),
    max_memory_mb: Optional[float] = typer.Option(None, help="Memory limit of each benchmark process (default 80%% of RAM)"),
) -> None:
    """Serve the agent: GET /v1/device, POST /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel."""
    from sdk.agent.server import Limits, serve

    phone = None
    if adb_serial:
        from sdk.agent.adb import Phone

        if runner is None:
            raise UserInputError("--adb-serial needs --runner: the binary that runs bundles on the phone "
                                 "(e.g. ExecuTorch's executor_runner built for arm64)")
        phone = Phone(serial=adb_serial, runner=str(runner))
    limits = Limits(max_upload_mb=max_upload_mb, max_queued=max_queued, min_free_mb=min_free_mb,
                    retention_days=retention_days, max_memory_mb=max_memory_mb)
    serve(host, port, token, data_dir.expanduser(), max_upload_mb, phone=phone, limits=limits,
          ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


@agent_app.command("token")
def agent_token() -> None:
    """Print a new random token (256 bits, URL-safe) for `edge-sdk agent serve --token`."""
    import secrets

    typer.echo(secrets.token_urlsafe(32))


@app.command("bench", epilog="Examples:\n\n  edge-sdk bench out/intel-cpu\n\n"
             "  edge-sdk bench out/jetson-orin-nano --agent http://jetson.local:8765")
def bench_cmd(
    bundles: list[Path] = typer.Argument(..., help="Bundle folder(s), e.g. out/intel-cpu"),
    agent: Optional[str] = typer.Option(None, "--agent", help="Agent URL; default: run here in a child process"),
    token: Optional[str] = typer.Option(None, envvar="EDGE_SDK_AGENT_TOKEN", help="Agent bearer token"),
    warmup: int = typer.Option(RunSpec.warmup, help="Untimed iterations before timing"),
    iterations: int = typer.Option(RunSpec.iterations, help="Timed iterations"),
    as_json: bool = typer.Option(False, "--json", help="Print the raw results as JSON"),
    prompt_len: Optional[str] = typer.Option(None, "--prompt-len", help="LLM bundles: prompt lengths, e.g. 64,512"),
    new_tokens: int = typer.Option(128, "--new-tokens", help="LLM bundles: tokens generated per prompt"),
) -> None:
    """Measure bundles on a device through the agent: latency, load time, memory, parity, energy.

    LLM bundles (task text-generation) are measured by generating, here: TTFT, prefill/decode tokens/s."""
    from sdk.agent import Client, LocalAgent

    if prompt_len is not None or all(_is_llm_bundle(b) for b in bundles):
        if agent:
            raise UserInputError("LLM bundles are benchmarked on this machine; on a device, call "
                                 "Client(url).generate or run `edge-sdk bench` there")
        return _llm_bench(bundles, prompt_len or "64", new_tokens, as_json)

    runner = Client(agent, token) if agent else LocalAgent()
    results = []
    with console.status("benchmarking") as status:
        for bundle in bundles:
            status.update(f"benchmarking {bundle} on {agent or 'this machine'}")
            results.append(runner.benchmark(bundle, warmup=warmup, iterations=iterations).to_dict())
    if as_json:
        console.print_json(json.dumps(results, default=str))
        return
    table = Table(title=f"Benchmark on {agent or 'this machine'} ({iterations} iterations)")
    for col in ("bundle", "ran on", "load ms", "p50 ms [95% CI]", "p90 ms", "p99 ms", "n, CV", "peak RSS MB", "parity",
                "energy / inference"):
        table.add_column(col)
    for bundle, r in zip(bundles, results):
        if not r.get("ran"):
            table.add_row(str(bundle), f"[yellow]not run[/yellow]: {r.get('reason')}", *["-"] * 8)
            continue
        lat, parity = r["latency_ms"], r["parity"]
        ci = lat.get("median_ci") or {}
        p50 = f"{lat['p50']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else f"{lat['p50']:.3f}"
        spread = f"{lat['n']}, {lat['cv']:.0%}" if lat.get("cv") is not None else str(lat["n"])
        per_mj = (r.get("energy") or {}).get("per_inference_mj")
        energy = f"{per_mj:.3f} mJ" if per_mj is not None else f"n/a: {(r.get('energy_reason') or 'at or below idle').split(':')[0]}"
        table.add_row(str(bundle), r["ran_on"], f"{r['load_ms']:.1f}", p50, f"{lat['p90']:.3f}",
                      f"{lat['p99']:.3f}", spread, f"{r['peak_rss_mb']:.0f}",
                      "[green]pass[/green]" if parity["passed"] else "[red]FAIL[/red]", energy)
    console.print(table)
    for bundle, r in zip(bundles, results):
        for warning in r.get("warnings") or []:
            console.print(f"[yellow]{bundle}: {warning}[/yellow]")
    if any(r.get("ran") and not r["parity"]["passed"] for r in results):
        raise typer.Exit(1)


def _fraction(text: str, what: str) -> float:
    """'1%' or '0.01' -> 0.01."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserInputError(f"{what} must look like 1% or 0.01, got {text!r}") from None


@app.command("optimize")
def optimize_cmd(
    model: str = typer.Argument(..., help="Model factory: path/to/file.py:build (an nn.Module or (model, inputs))"),
    device: str = typer.Option(..., "--device", "-d", help="Device id or alias"),
    eval_data: str = typer.Option(..., "--eval", help="Eval data: file.py:loader ((inputs..., label) batches)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration data: file.py:loader"),
    shape: list[str] = typer.Option([], "--shape", help="Input shape like 1x3x224x224 (repeat per input)"),
    metric: str = typer.Option("top1", "--metric", help="top1, top5, spearman (labeled eval data), agreement or cosine (with fp32)"),
    max_drop: str = typer.Option("1%", "--max-drop", help="Largest metric drop allowed against the fp32 export"),
    objective: str = typer.Option("latency", "--objective", help="latency, energy, size or memory"),
    trials: int = typer.Option(20, "--trials", help="Trials in the study in all (a resumed study counts its own)"),
    minutes: float = typer.Option(30.0, "--minutes", help="Wall-time budget of this run"),
    distill_steps: int = typer.Option(0, "--distill-steps", help="Training steps per pass candidate; 0: no passes"),
    size_mb: Optional[float] = typer.Option(None, "--max-size-mb", help="Constraint: artifact size"),
    agent: str = typer.Option("local", "--agent", help="'local' or an agent URL"),
    out: Path = typer.Option(Path("out/optimize"), "--out", "-o", help="Output folder (study.db, report.html)"),
) -> None:
    """Search the device's recipes for the fastest one within --max-drop, measured on the agent."""
    import sdk
    from sdk.optimizer.report import COLUMNS, table_rows

    net, inputs = _model_and_inputs(model, shape)
    loaders = [_load_attr(spec, what)[0] if spec else None for spec, what in ((eval_data, "--eval"),
                                                                            (calibration, "--calibration"))]
    labeled, calib = (x() if callable(x) else x for x in loaders)

    with _toolchain_output(keep=_state["debug"]):
        res = sdk.optimize(net, device, inputs, eval_data=labeled, calibration=calib, metric=metric,
                           max_drop=_fraction(max_drop, "--max-drop"), objective=objective,
                           constraints={"size_mb": size_mb} if size_mb is not None else None,
                           budget=sdk.Budget(trials=trials, minutes=minutes, distill_steps=distill_steps),
                           agent=agent, study=out / "study.db", output_dir=out, progress=_print_trial)
    cost = res.cost
    table = Table(title=f"sdk.optimize on {res.space.device}: {cost.minutes} min, {cost.device_s} s on the device")
    shown = [COLUMNS.index(c) for c in ("trial", "recipe", "drop [95% CI]", "p50 ms [95% CI]", "vs fp32", "size MB",
                                         "status")]  # the rest (p90, memory, energy, coverage) is in report.html
    for i in shown:
        table.add_column(COLUMNS[i])
    for row in table_rows(res):
        table.add_row(*(row[i] for i in shown))
    console.print(table)
    console.print(f"best: {res.best.label}" if res.best else f"[red]no recipe chosen[/red]: {res.why}",
                  highlight=False)
    console.print(f"report: {out / 'report.html'}", highlight=False)
    if res.best is None:
        raise typer.Exit(1)


@app.command("test", epilog="Examples:\n\n  edge-sdk test out/intel-cpu\n\n"
             "  edge-sdk test out/jetson-orin-nano --agent http://jetson.local:8765 --junitxml results.xml")
def test_cmd(
    bundles: list[Path] = typer.Argument(..., help="Bundle folder(s), e.g. out/jetson-orin-nano"),
    agent: str = typer.Option("local", "--agent", help="Agent URL, e.g. http://jetson.local:8765; 'local' runs here"),
    token: Optional[str] = typer.Option(None, envvar="EDGE_SDK_AGENT_TOKEN", help="Agent bearer token"),
    device: Optional[str] = typer.Option(None, "--device", help="Profile whose budgets apply (default: each bundle's)"),
    junitxml: Optional[Path] = typer.Option(None, "--junitxml", help="Write JUnit XML here, for device-lab CI"),
    warmup: int = typer.Option(RunSpec.warmup, help="Untimed iterations before timing"),
    iterations: int = typer.Option(RunSpec.iterations, help="Timed iterations for latency, memory and energy"),
    soak_iterations: int = typer.Option(1000, help="Iterations of the soak run (drift, memory growth)"),
    latency_budget_ms: Optional[float] = typer.Option(None, help="Latency p90 budget for every bundle"),
    memory_budget_mb: Optional[float] = typer.Option(None, help="Peak memory budget for every bundle"),
    energy_budget_mj: Optional[float] = typer.Option(None, help="Energy per inference budget for every bundle"),
    farm: Optional[str] = typer.Option(None, "--farm", help="Run on every device of the farm at HEAD:6379 whose "
                                       "profile matches a bundle; JUnit per device"),
) -> None:
    """Gate bundles on a device: load, parity, latency, memory, energy, soak and bad input, through its agent.

    Prints a table per bundle and exits non-zero when a check fails; budgets also come from a
    device_tests.toml beside the bundles, else the device profile.
    """
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        raise UserInputError("edge-sdk test runs the device suite with pytest, which is not installed here: "
                             "pip install pytest")
    from device_tests.runner import run, run_farm

    options = dict(device=device, junitxml=junitxml, warmup=warmup, iterations=iterations,
                   soak_iterations=soak_iterations, console=console,
                   budgets={"latency_p90_ms": latency_budget_ms, "memory_budget_mb": memory_budget_mb,
                            "energy_mj_per_inference": energy_budget_mj})
    code = run_farm(bundles, farm, **options) if farm else run(bundles, agent=agent, token=token, **options)
    if code:
        raise typer.Exit(code)


#: loggers of the toolchains the converters drive; their INFO/WARNING chatter hides the SDK's own output
_TOOLCHAIN_LOGGERS = ("coremltools", "nncf", "torch", "torch.utils._pytree", "torchao", "executorch", "onnxscript", "onnxruntime", "absl",
                      "litert_torch", "ai_edge_quantizer", "openvino", "jax", "root")


def _quiet_toolchains() -> None:
    """Silence third-party progress bars, warnings and C++ logs (`--debug` keeps them): the SDK reports what matters."""
    import warnings

    for var, value in (("TQDM_DISABLE", "1"), ("TF_CPP_MIN_LOG_LEVEL", "3"), ("GLOG_minloglevel", "2")):
        os.environ.setdefault(var, value)
    warnings.filterwarnings("ignore")
    for name in _TOOLCHAIN_LOGGERS:
        logging.getLogger(None if name == "root" else name).setLevel(logging.ERROR)
    quiet_third_party_bars()


ABORTED = 130  # the shell's exit status for SIGINT


def main() -> None:
    """Console-script entry point: turn SDK errors into one readable paragraph and exit code 1."""
    if "--debug" not in sys.argv:
        _quiet_toolchains()
    try:
        code = app(standalone_mode=False)  # without standalone mode, typer.Exit(n) comes back as a return value
        if code == ABORTED:  # typer turns Ctrl-C into exit code 130
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except SdkError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted, nothing written for the export in progress (its staging folder was removed; "
                          "bundles finished before it are kept)", highlight=False)
        sys.exit(ABORTED)
    except Exception as exc:  # click usage errors have their own display
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]internal error:[/bold red] {type(exc).__name__}: {exc} "
                          "(run with --debug for the traceback and please report it)", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
