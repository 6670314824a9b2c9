"""Where an export is checked: on this host (in-process agent), on a remote agent, or not at all."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk.recipes import Tolerance

HOST_WARMUP = 3
HOST_ITERATIONS = 20


def validate_bundle(bundle_dir: Path, validate: bool | str, tolerance: Tolerance) -> dict[str, Any]:
    """Run the bundle and measure it; the result always says where it ran or why it did not."""
    if validate is False:
        return {"mode": "skipped", "ran": False, "reason": "validate=False: the artifact was not run"}
    if isinstance(validate, str):
        from sdk.agent.client import Client

        result = Client(validate).benchmark(bundle_dir, tolerance=tolerance.to_dict()).to_dict()
        return {"mode": "agent", "agent": validate, **result}
    if validate is not True:
        from sdk.errors import UserInputError

        raise UserInputError(f"validate must be True, False or an agent URL, got {validate!r}")
    from sdk.agent import bench

    return {"mode": "host", **bench.run(bundle_dir, warmup=HOST_WARMUP, iterations=HOST_ITERATIONS,
                                        tolerance=tolerance.to_dict())}
