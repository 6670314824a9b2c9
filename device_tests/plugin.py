"""The pytest plugin of the on-device test runner: options, fixtures, and one measurement per bundle.

Registered through the `pytest11` entry point, so its options and fixtures exist in every pytest session
where edge-sdk is installed. It is inert unless `--bundle` is given: it imports no numpy, httpx or runtime
(sdk.core.errors and tomllib at most), connects to no agent, and parametrizes no test. Fixtures for your own device tests:
`agent` (sdk.agent.Client, LocalAgent for `--agent local`, one farm device for
`--agent farm://HEAD/DEVICE`), `bundle` (sdk.Artifact, one per
`--bundle`), `device_profile` (sdk.devices.DeviceProfile), `device_budgets`, `device_label`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_tests import checks

__all__ = ["ResultsCollector"]

#: --agent farm://HEAD:6379/DEVICE runs on that one device of a farm (what `edge-sdk test --farm` passes)
FARM_SCHEME = "farm://"
#: options that take a positive integer, with their defaults
_COUNTS = {"--warmup": 10, "--iterations": 200, "--soak-iterations": 1000}


def pytest_addoption(parser: pytest.Parser) -> None:
    from device_tests.config import BUDGETS

    group = parser.getgroup("edge-sdk", "edge-sdk device tests (run bundles on a device through its agent)")
    group.addoption("--bundle", dest="edge_bundles", action="append", default=[], metavar="PATH",
                    help="bundle folder written by sdk.export to test on the device (repeat for several); "
                         "without one the plugin does nothing")
    group.addoption("--agent", dest="edge_agent", default="local", metavar="URL",
                    help="agent URL, e.g. http://jetson.local:8765; 'local' (default) runs on this machine; "
                         "farm://HEAD:6379/DEVICE: one device of a farm")
    group.addoption("--agent-token", dest="edge_agent_token", default=None, metavar="TOKEN",
                    help="the agent's bearer token (default: $EDGE_SDK_AGENT_TOKEN)")
    group.addoption("--agent-target", dest="edge_agent_target", default="auto", choices=("auto", "local", "phone"),
                    help="'phone': run on the phone the agent drives over adb; 'auto' (default) does so for "
                         "adb-transport profiles when the agent has a phone for the bundle's runtime")
    group.addoption("--device", dest="edge_device", default=None, metavar="ID",
                    help="device profile whose budgets apply (default: each bundle's manifest device)")
    for option, default in _COUNTS.items():
        group.addoption(option, dest="edge_" + option[2:].replace("-", "_"), type=int, default=default,
                        metavar="N", help=f"{option[2:].replace('-', ' ')} per benchmark (default {default})")
    group.addoption("--job-timeout-s", dest="edge_job_timeout_s", type=float, default=600.0, metavar="S",
                    help="the agent kills a benchmark running longer than this (default 600)")
    group.addoption("--idle-s", dest="edge_idle_s", type=float, default=1.0, metavar="S",
                    help="idle-power sampling before the timed loop, for energy per inference (default 1)")
    for key, (unit, option, _) in BUDGETS.items():
        group.addoption(option, dest=f"edge_{key}", type=float, default=None, metavar=unit or "X",
                        help=f"{key} for every bundle, over device_tests.toml and the profile")


def _bundle_paths(config: pytest.Config) -> list[str]:
    return list(config.getoption("edge_bundles", default=None) or [])


def pytest_configure(config: pytest.Config) -> None:
    """With bundles: check options, bundles and device_tests.toml now, so a typo is one usage error."""
    paths = _bundle_paths(config)
    if not paths:
        return
    from device_tests.config import CONFIG_FILE, read_config
    from sdk import devices
    from sdk.core.bundle import load_artifact
    from sdk.core.errors import SdkError

    for option in _COUNTS:
        if config.getoption("edge_" + option[2:].replace("-", "_")) < 1:
            raise pytest.UsageError(f"{option} must be at least 1")
    try:
        if config.getoption("edge_device"):
            devices.get(config.getoption("edge_device"))
        for path in paths:
            load_artifact(path)
        for folder in {Path(p).parent for p in paths}:
            if (folder / CONFIG_FILE).is_file():
                read_config(folder / CONFIG_FILE)
    except SdkError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not any(isinstance(p, ResultsCollector) for p in config.pluginmanager.get_plugins()):
        config.pluginmanager.register(ResultsCollector(), "edge-sdk-device-results")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    paths = _bundle_paths(config)
    if not paths:
        return None
    return [f"edge-sdk device tests: agent {config.getoption('edge_agent')}, bundles {', '.join(paths)}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses this plugin's `bundle` fixture once per --bundle (session-scoped, so each
    bundle is measured once however many tests read the result)."""
    paths = _bundle_paths(metafunc.config)
    if not paths or "bundle" not in metafunc.fixturenames:
        return
    # A test module or conftest that defines its own `bundle` fixture keeps it, unparametrized. pytest exposes
    # the resolved definitions only privately: where it does not, every `bundle` user is parametrized.
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("bundle") or ()
    if defs and getattr(getattr(defs[-1], "func", None), "__module__", __name__) != __name__:
        return
    metafunc.parametrize("bundle", paths, indirect=True, scope="session", ids=[Path(p).name or p for p in paths])


@pytest.fixture(scope="session")
def agent(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The agent that runs the bundles: sdk.agent.Client for a URL, sdk.agent.LocalAgent for 'local'."""
    url = pytestconfig.getoption("edge_agent")
    if url == "local":
        from sdk.agent import LocalAgent

        yield LocalAgent()
        return
    if url.startswith(FARM_SCHEME):  # one device of a farm: farm://HEAD:6379/DEVICE
        from sdk.farm import connect

        address, _, device = url.removeprefix(FARM_SCHEME).partition("/")
        yield connect(address).pin(device)
        return
    from sdk.agent import Client

    client = Client(url, pytestconfig.getoption("edge_agent_token"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def bundle(request: pytest.FixtureRequest) -> Any:
    """The bundle under test (sdk.Artifact), one per --bundle."""
    if not hasattr(request, "param"):
        pytest.skip("no bundle to test: pass --bundle PATH (a folder written by sdk.export)")
    from sdk.core.bundle import load_artifact

    return load_artifact(request.param)


@pytest.fixture(scope="session")
def device_profile(bundle: Any, pytestconfig: pytest.Config) -> Any:
    """The device profile whose budgets apply: --device, else the bundle's own device."""
    from sdk import devices

    return devices.get(pytestconfig.getoption("edge_device") or bundle.device)


@pytest.fixture(scope="session")
def device_label(bundle: Any, device_profile: Any) -> str:
    """How failure messages name the case: 'out/intel-cpu (intel-cpu)'."""
    return f"{bundle.path} ({device_profile.id})"


@pytest.fixture(scope="session")
def device_budgets(bundle: Any, device_profile: Any, pytestconfig: pytest.Config) -> dict[str, Any]:
    """Budget key -> device_tests.config.Budget (value and source) for this bundle."""
    from device_tests.config import BUDGETS, resolve

    return resolve(bundle.path, device_profile, {k: pytestconfig.getoption(f"edge_{k}") for k in BUDGETS})


@pytest.fixture(scope="session")
def device_upload(agent: Any, bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What to hand to agent.benchmark: the folder here, a zip made once for a remote agent."""
    from sdk.agent import LocalAgent

    if isinstance(agent, LocalAgent):
        return bundle.path
    return bundle.zip(tmp_path_factory.mktemp("upload") / f"{bundle.path.name}.zip")


@pytest.fixture(scope="session")
def device_target(agent: Any, bundle: Any, device_profile: Any, pytestconfig: pytest.Config) -> str:
    """'phone' or 'local': where the agent runs this bundle."""
    from sdk.agent import LocalAgent

    wanted = pytestconfig.getoption("edge_agent_target")
    if isinstance(agent, LocalAgent):
        if wanted == "phone":
            pytest.fail("--agent-target phone needs a remote agent that drives the phone (--agent URL)", pytrace=False)
        return "local"
    if wanted != "auto":
        return wanted
    from sdk.core.errors import SdkError

    try:
        phone = agent.device().get("phone") or {}
    except SdkError:
        return "local"  # the benchmark will meet the same error and report it (test_loads)
    on_phone = device_profile.agent_transport == "adb" and bundle.runtime in phone.get("runtimes", ())
    return "phone" if on_phone else "local"


def run_benchmark(agent: Any, upload: Path, target: str, **spec: Any) -> checks.Outcome:
    """One benchmark job as an Outcome: the result, or the SDK error's message (never raised)."""
    from sdk.core.errors import SdkError

    if target != "local":
        spec["target"] = target
    try:
        return checks.Outcome(agent.benchmark(upload, **spec))
    except SdkError as exc:
        return checks.Outcome(None, str(exc))


def _spec(config: pytest.Config, **changes: Any) -> dict[str, Any]:
    spec = {"warmup": config.getoption("edge_warmup"), "iterations": config.getoption("edge_iterations"),
            "timeout_s": config.getoption("edge_job_timeout_s"), "idle_s": config.getoption("edge_idle_s")}
    return {**spec, **changes}


@pytest.fixture(scope="session")
def device_benchmark(agent: Any, device_upload: Path, device_target: str, pytestconfig: pytest.Config
                     ) -> checks.Outcome:
    """The main measurement of this bundle: load, parity, latency, memory, energy."""
    return run_benchmark(agent, device_upload, device_target, **_spec(pytestconfig, energy=True))


@pytest.fixture(scope="session")
def device_soak(agent: Any, device_upload: Path, device_target: str, device_benchmark: checks.Outcome,
                pytestconfig: pytest.Config) -> checks.Outcome | None:
    """The long run (--soak-iterations); None when the bundle did not run at all."""
    if not device_benchmark.ran:
        return None
    return run_benchmark(agent, device_upload, device_target,
                     **_spec(pytestconfig, iterations=pytestconfig.getoption("edge_soak_iterations"),
                             energy=False, idle_s=0.0))


@pytest.fixture
def device_check(request: pytest.FixtureRequest, bundle: Any, device_profile: Any) -> Callable[[checks.Verdict], None]:
    """Hand a checks.Verdict to pytest: recorded on the test's report (JUnit XML properties, the summary
    table), then failed or skipped with its message."""
    def judge(verdict: checks.Verdict) -> None:
        request.node.user_properties.extend([
            ("bundle", str(bundle.path)), ("device", device_profile.id), ("check", verdict.check),
            ("measured", verdict.measured), ("budget", verdict.budget)])
        if verdict.failure:
            pytest.fail(verdict.failure, pytrace=False)
        if verdict.skipped:
            pytest.skip(verdict.skipped)

    return judge


class ResultsCollector:
    """Gathers each device check's outcome from the test reports: for the terminal summary and `edge-sdk test`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.errors: list[str] = []  # tests that failed outside a check, e.g. in a fixture

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if report.failed and "check" not in props:
            lines = report.longreprtext.strip().splitlines()
            self.errors.append(f"{report.nodeid} ({report.when}): {lines[-1] if lines else 'failed'}")
            return
        if report.when != "call" or "check" not in props:
            return
        if report.failed:
            message = report.longreprtext.strip()
        elif report.skipped:
            message = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
        else:
            message = ""
        self.rows.append({**{k: str(v) for k, v in props.items()}, "outcome": report.outcome, "message": message,
                          "nodeid": report.nodeid})

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if terminalreporter.verbosity < 0 or not self.rows:
            return
        terminalreporter.section("edge-sdk device tests")
        for row in self.rows:
            terminalreporter.write_line(f"{row['outcome']:>7}  {row['bundle']} ({row['device']})  {row['check']}: "
                                        f"{row['measured']}  [budget: {row['budget']}]")
