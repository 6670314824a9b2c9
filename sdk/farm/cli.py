"""`edge-sdk farm host|devices|remove`: attach a lab host's devices to the farm and look at the farm."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sdk.core.errors import UserInputError

farm_app = typer.Typer(help="A device farm on Ray: attach devices on lab hosts, list them.", no_args_is_help=True)
console = Console()

_ADDRESS = typer.Option(..., "--address", help="The farm's Ray head, HOST:6379 (lab-internal: see docs/farm.md)")


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--label must look like key=value, got {pair!r}")
        out[key] = value
    return out


@farm_app.command("host")
def host_cmd(
    address: str = _ADDRESS,
    device: str = typer.Option(..., "--device", help="Profile id of the attached device, e.g. android-arm64"),
    adb: str | None = typer.Option(None, "--adb", help="Serial of a phone on this host's USB (adb devices)"),
    runner: Path | None = typer.Option(None, "--runner", help="With --adb: runner binary pushed to the phone"),
    agent: str | None = typer.Option(None, "--agent", help="URL of the device's agent (edge-sdk agent serve)"),
    token: str | None = typer.Option(None, "--token", envvar="EDGE_SDK_AGENT_TOKEN",
                                        help="The agent's bearer token (passed to the device actor, never printed)"),
    local: bool = typer.Option(False, "--local", help="This host itself is the device (its own runtimes)"),
    name: str | None = typer.Option(None, "--name", help="Device name in the farm (default: profile-serial/url)"),
    node: str | None = typer.Option(None, "--node", help="Ray node name or id to run on (default: this host's)"),
    label: list[str] = typer.Option([], "--label", help="Extra routing label key=value (repeat)"),
) -> None:
    """Attach one device on this lab host to the farm (one call per device; this host must be a Ray node:
    `ray start --address HEAD:6379`). The device's actor stays after this command exits."""
    from sdk.farm.device import AdbConnection, AgentConnection, LocalConnection
    from sdk.farm.ray_farm import host

    if sum([adb is not None, agent is not None, local]) != 1:
        raise UserInputError("give exactly one of --adb SERIAL (with --runner), --agent URL or --local")
    if adb is not None:
        if runner is None:
            raise UserInputError("--adb needs --runner: the binary that runs bundles on the phone "
                                 "(e.g. ExecuTorch's executor_runner built for arm64)")
        connection = AdbConnection(serial=adb, runner=str(runner.resolve()))
    elif agent is not None:
        connection = AgentConnection(agent, token)
    else:
        connection = LocalConnection()
    row = host(address, device, connection, name=name, node=node, labels=_labels(label))
    console.print(f"device [bold]{row.name}[/bold] attached on {row.host}: "
                  + ", ".join(f"{k}={v}" for k, v in row.labels.items()), highlight=False)


@farm_app.command("devices")
def devices_cmd(address: str = _ADDRESS) -> None:
    """Every device of the farm: labels, host, busy/free (or lost: its host died), jobs done."""
    from sdk.farm.farm import connect

    farm = connect(address)
    table = Table(title=f"Devices of the farm at {address} (job record: {farm.store_path} on the head)")
    for column in ("device", "labels", "host", "state", "jobs done"):
        table.add_column(column, overflow="fold")
    style = {"free": "[green]free[/green]", "busy": "[yellow]busy[/yellow]", "lost": "[red]lost[/red]"}
    for row in farm.devices():
        labels = ", ".join(f"{k}={v}" for k, v in row.labels.items() if k not in ("device", "host"))
        table.add_row(row.name, labels, row.host, style[row.state] + (f" ({row.job})" if row.job else ""),
                      str(row.jobs_done))
    console.print(table)


@farm_app.command("remove")
def remove_cmd(address: str = _ADDRESS, name: str = typer.Argument(..., help="Device name")) -> None:
    """Take a device out of the farm and stop its actor."""
    from sdk.farm.ray_farm import remove

    if not remove(address, name):
        raise UserInputError(f"no device named {name!r} in the farm at {address}")
    console.print(f"device {name} removed")
