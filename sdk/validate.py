"""Where an export is checked: on this host (in-process agent), on a remote agent, or not at all."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk.errors import UserInputError
from sdk.recipes import Tolerance

#: host validation is a check, not a benchmark: `edge-sdk bench` and `make bench` measure properly
HOST_CHECK = {"warmup": 5, "iterations": 30, "idle_s": 0.5}


def validate_bundle(bundle_dir: Path, validate: bool | str, tolerance: Tolerance) -> dict[str, Any]:
    """Run the bundle and measure it; the result always says where it ran or why it did not."""
    if validate is False:
        return {"mode": "skipped", "ran": False, "reason": "validate=False: the artifact was not run"}
    if isinstance(validate, str):
        from sdk.agent.client import Client

        with Client(validate) as agent:
            result = agent.benchmark(bundle_dir, tolerance=tolerance.to_dict()).to_dict()
        return {"mode": "agent", **result}
    if callable(getattr(validate, "benchmark", None)):  # an agent object: a Client, a LocalAgent, an sdk.farm farm
        result = validate.benchmark(bundle_dir, tolerance=tolerance.to_dict()).to_dict()
        return {"mode": "agent", **result}
    if validate is not True:
        raise UserInputError(f"validate must be True, False, an agent URL or an agent (e.g. sdk.farm.connect(...)), "
                             f"got {validate!r}")
    from sdk.agent.local import LocalAgent

    result = LocalAgent().benchmark(bundle_dir, tolerance=tolerance.to_dict(), **HOST_CHECK).to_dict()
    return {"mode": "host", **result}
