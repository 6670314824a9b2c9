"""What `edge-sdk test` runs: the built-in suite over bundles through an agent, one summary table per bundle.

pytest runs in this process with the suite's own settings only (`-c os.devnull`), so the configuration of
whatever project it is started from (addopts, plugins' options, python_files) cannot change the gate.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from device_tests.config import BUDGETS
from device_tests.plugin import FARM_SCHEME, ResultsCollector

__all__ = ["SUITE", "pytest_args", "run", "run_farm"]

SUITE = Path(__file__).resolve().parent
MODULES = ("test_device.py", "test_soak.py", "test_bad_input.py")
_STYLE = {"passed": "[green]pass[/green]", "failed": "[red]FAIL[/red]", "skipped": "[yellow]skip[/yellow]"}


def pytest_args(bundles: Sequence[str | Path], *, agent: str = "local", token: str | None = None,
                device: str | None = None, junitxml: str | Path | None = None, warmup: int | None = None,
                iterations: int | None = None, soak_iterations: int | None = None,
                budgets: Mapping[str, float | None] | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The pytest command line for the built-in suite (what `pytest` itself would be given)."""
    # --assert=plain: the suite judges with its own messages, and the plugin is imported already (by this module)
    args = ["-p", "device_tests.plugin", "-c", os.devnull, "--rootdir", str(SUITE), "-p", "no:cacheprovider",
            "--assert=plain", "-q", *(str(SUITE / m) for m in MODULES), "--agent", agent]
    for path in bundles:
        args += ["--bundle", str(path)]
    options = {"--agent-token": token, "--device": device, "--junitxml": junitxml, "--warmup": warmup,
               "--iterations": iterations, "--soak-iterations": soak_iterations}
    options |= {BUDGETS[key][1]: value for key, value in (budgets or {}).items()}
    for option, value in options.items():
        if value is not None:
            args += [option, str(value)]
    return [*args, *extra]


def summary_tables(rows: Sequence[Mapping[str, str]], agent: str) -> list[Table]:
    """One table per bundle: each check's outcome, what was measured, the budget, and why it failed or skipped."""
    tables: dict[str, Table] = {}
    for row in rows:
        key = f"{row['bundle']} ({row['device']})"
        if key not in tables:
            tables[key] = Table(title=escape(f"{key} on {agent}"), title_justify="left")
            for column in ("check", "result", "measured", "budget", "why"):
                tables[key].add_column(column, overflow="fold")
        why = row["message"] if row["outcome"] != "passed" else ""
        if row["outcome"] == "skipped" and len(why) > 200:  # the full reason is in pytest's output and the XML
            why = why[:200] + "..."
        tables[key].add_row(escape(row["check"]), _STYLE.get(row["outcome"], escape(row["outcome"])),
                            escape(row["measured"]), escape(row["budget"]), escape(why.removeprefix(f"{key}: ")))
    return list(tables.values())


def run(bundles: Sequence[str | Path], *, agent: str = "local", token: str | None = None, device: str | None = None,
        junitxml: str | Path | None = None, warmup: int | None = None, iterations: int | None = None,
        soak_iterations: int | None = None, budgets: Mapping[str, float | None] | None = None,
        extra: Sequence[str] = (), console: Console | None = None) -> int:
    """Run the suite and print the tables; returns pytest's exit code (0: every check passed or was skipped)."""
    collector = ResultsCollector()
    code = pytest.main(pytest_args(bundles, agent=agent, token=token, device=device, junitxml=junitxml,
                                   warmup=warmup, iterations=iterations, soak_iterations=soak_iterations,
                                   budgets=budgets, extra=extra), plugins=[collector])
    console = console or Console()
    for table in summary_tables(collector.rows, agent):
        console.print(table)
    for error in collector.errors:
        console.print(f"[red]error[/red] {error}", highlight=False)
    return int(code)


def run_farm(bundles: Sequence[str | Path], address: str, *, junitxml: str | Path | None = None,
             console: Console | None = None, **options: Any) -> int:
    """Run the suite on every live device of the farm at `address`, each with the bundles of its profile; one
    JUnit file per device (`<junitxml stem>-<device><suffix>`). Returns the worst exit code (5: no device
    matched any bundle)."""
    from sdk.core.bundle import load_artifact
    from sdk.farm import connect

    console = console or Console()
    by_profile: dict[str, list[str | Path]] = {}
    for path in bundles:
        by_profile.setdefault(load_artifact(path).device, []).append(path)
    worst = 0
    ran = 0
    for row in connect(address).devices():
        mine = by_profile.get(row.labels.get("profile", ""), [])
        if row.state == "lost" or not mine:
            continue
        ran += 1
        xml = None if junitxml is None else Path(junitxml).with_name(
            f"{Path(junitxml).stem}-{row.name}{Path(junitxml).suffix or '.xml'}")
        console.print(f"[bold]{row.name}[/bold] ({row.labels.get('profile')} on {row.host})", highlight=False)
        code = run(mine, agent=f"{FARM_SCHEME}{address}/{row.name}", junitxml=xml, console=console, **options)
        worst = max(worst, code)
    if not ran:
        console.print(f"[red]no live device of the farm at {address} has the profile of any bundle "
                      f"({', '.join(sorted(by_profile))})[/red]", highlight=False)
        return 5
    return worst
