"""Docs stay true to the code: generated pages are current and every python block runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_device_pages_are_generated_from_profiles():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_devices
    finally:
        sys.path.pop(0)
    pages = gen_devices.render()
    on_disk = {f.name: f.read_text() for f in (ROOT / "docs" / "devices").glob("*.md")}
    assert on_disk == pages, "run: python docs/gen_devices.py"


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory):
    """A real agent server on 127.0.0.1 (`edge-sdk agent serve`), for the blocks that talk to a device's agent."""
    import secrets
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_urlsafe(16)
    server = subprocess.Popen([str(Path(sys.executable).with_name("edge-sdk")), "agent", "serve", "--host", "127.0.0.1",
                               "--port", str(port), "--token", token, "--data-dir", str(tmp_path_factory.mktemp("agent"))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v1/device", headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the agent did not start: {server.stderr.read1().decode()[-2000:]}")
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("page", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, agent_url):
    """Each page's python blocks run in order, in one fresh interpreter, from a scratch folder, with a real
    agent at $EDGE_SDK_AGENT_URL."""
    code = "\n".join(BLOCK.findall(page.read_text()))
    url, token = agent_url
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGE_SDK_AGENT_URL=url, EDGE_SDK_AGENT_TOKEN=token)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


# --- every other block: labelled, and checked for what it is ---

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.S | re.M)
#: python runs (above); console lines are parsed by the real CLI / pytest plugin / Makefile; toml is loaded;
#: text is output or a diagram, not code
LANGUAGES = {"python", "console", "toml", "text"}
#: pytest's own options the docs use (the plugin's are checked against the plugin)
PYTEST_OPTIONS = {"-v", "-q", "-x", "--pyargs", "--junitxml"}


def _blocks(language: str) -> list[tuple[str, str]]:
    return [(page.name, body) for page in DOCS for lang, body in FENCE.findall(page.read_text()) if lang == language]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_block_is_labelled(page):
    unlabelled = [body.splitlines()[0] if body else "" for lang, body in FENCE.findall(page.read_text())
                  if lang not in LANGUAGES]
    assert not unlabelled, f"{page.name}: label these blocks with one of {sorted(LANGUAGES)}: {unlabelled}"


def _commands() -> list[tuple[str, list[str]]]:
    """(page, argv) for every command line of every console block, continuation lines joined, comments dropped."""
    import shlex

    out = []
    for page, body in _blocks("console"):
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append((page, argv))
    return out


def _parse_cli(argv: list[str]) -> None:
    """Parse with the real edge-sdk command tree (Typer's click), down to the leaf command, without running it."""
    import typer

    from sdk.cli import app

    command = typer.main.get_command(app)
    ctx = command.make_context("edge-sdk", argv)
    while hasattr(command, "resolve_command"):  # a group
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)


def _parse_pytest(argv: list[str]) -> None:
    from device_tests import plugin

    parser = pytest.Parser(_ispytest=True)
    plugin.pytest_addoption(parser)
    _, unknown = parser.parse_known_and_unknown_args(argv)
    assert not [a for a in unknown if a.startswith("-") and a not in PYTEST_OPTIONS], unknown


def test_console_commands_parse():
    """`edge-sdk …` against the CLI, `pytest …` against the device-test plugin, `make X` against the Makefile."""
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    checked = 0
    for page, argv in _commands():
        if argv[0] == "edge-sdk":
            try:
                _parse_cli(argv[1:])
            except Exception as exc:  # click's usage errors
                pytest.fail(f"{page}: {' '.join(argv)}: {exc}")
        elif argv[0] == "pytest":
            _parse_pytest(argv[1:])
        elif argv[0] == "make":
            assert set(argv[1:]) <= targets, f"{page}: {' '.join(argv)}: no such make target"
        else:
            continue
        checked += 1
    assert checked >= 15


def test_console_commands_that_need_no_device_run():
    """The local, fast ones run for real."""
    runnable = [argv for _, argv in _commands() if argv[:2] == ["edge-sdk", "devices"]]
    assert runnable
    for argv in runnable:
        proc = subprocess.run([str(Path(sys.executable).with_name("edge-sdk")), *argv[1:]], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


def test_toml_blocks_load():
    import tomllib

    from device_tests.config import BUDGETS

    for page, body in _blocks("toml"):
        data = tomllib.loads(body)
        budgets = [k for k, v in data.items() if not isinstance(v, dict)]
        budgets += [k for table in data.values() if isinstance(table, dict) for k in table]
        assert set(budgets) <= set(BUDGETS), f"{page}: unknown budget keys {set(budgets) - set(BUDGETS)}"
