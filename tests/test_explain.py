"""A parity failure says what the numbers mean: held-out data passed, the one random example_inputs did not."""
from __future__ import annotations

import pytest
import torch

import sdk
from sdk.errors import ParityError


def test_int8_failure_on_a_random_example_points_at_the_example_not_the_tolerance(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 8)).eval()
    calibration = [(torch.rand(1, 16) * 0.1,) for _ in range(20)]  # the data the model really sees
    random_example = (torch.randn(1, 16) * 10,)  # far outside it
    with pytest.raises(ParityError) as info:
        sdk.export(model, "jetson", random_example, recipe="int8", calibration=calibration,
                   tolerance=sdk.Tolerance(min_cosine=0.99), output_dir=tmp_path)
    message = str(info.value)
    assert "On held-out data (last 4 of 20 calibration samples) it passed" in message
    assert "a real sample as example_inputs" in message and "looser" not in message
    assert not any(tmp_path.iterdir())
