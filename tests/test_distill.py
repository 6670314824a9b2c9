"""Distill's budget and schedule on tiny CPU models: the lr schedule, early stopping with the best weights restored,
the time budget, augmentation, and the config's lossless forms."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from converters.passes import apply
from converters.passes.data import as_batches, split
from converters.passes.distill import augment, lr_factor, train
from sdk.core.errors import RecipeError
from sdk.core.recipes import Distill, from_dict, parse


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def perturbed(model: nn.Module, scale: float) -> nn.Module:
    student = copy.deepcopy(model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * torch.randn_like(p))
    return student


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(1)
    return split(as_batches(list(torch.randn(200, 16).split(20)), 1))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(step, 200, "cosine") for step in range(200)]
    assert factors[0] == 0.1 and factors[9] == 1.0  # 10 warm-up steps (5% of 200)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] < 1e-3
    assert {lr_factor(step, 200, "constant") for step in range(200)} == {1.0}


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_training_follows_the_schedule(data, schedule):
    config = Distill(steps=60, lr=1e-2, schedule=schedule, patience=None)
    details = train(perturbed(mlp(), 0.3), mlp(), config, data)
    assert details["steps_run"] == 60 and details["stopped"] == "steps"
    assert details["lr_last"] == (1e-2 * lr_factor(59, 60, "cosine") if schedule == "cosine" else 1e-2)
    assert details["lr_last"] < 1e-4 or schedule == "constant"


def test_early_stopping_stops_a_converged_student_before_the_budget(data):
    """144 samples: the student fits them within a few hundred steps, and the held-out slice stops improving."""
    details = train(perturbed(mlp(), 0.05), mlp(), Distill(steps=5000, lr=1e-2, eval_every=10, patience=3), data)
    validation = details["validation"]
    assert details["stopped"] == "early_stop" and details["steps_run"] < 5000
    start, rows = validation["curve"]["rows"][0], validation["curve"]["rows"]
    assert validation["best"]["top1_agreement"] > start[1] and validation["best"]["cosine"] > start[2] + 0.1
    assert validation["best_step"] < details["steps_run"] and len(rows) == details["steps_run"] // 10 + 1
    assert validation["samples"] == 16 and details["train_samples"] == 144  # 10% of the 160 training samples
    assert validation["curve"]["columns"] == ["step", "top1_agreement", "cosine"]


def test_early_stopping_restores_the_best_weights(data):
    """A far too large lr wrecks a student that started close: the weights of step 0 are the best, and come back."""
    student = perturbed(mlp(), 0.01)
    start = copy.deepcopy(student.state_dict())
    details = train(student, mlp(), Distill(steps=500, lr=1.0, schedule="constant", eval_every=5, patience=2), data)
    assert details["stopped"] == "early_stop" and details["steps_run"] == 10
    assert details["validation"]["best_step"] == 0
    assert min(row[2] for row in details["validation"]["curve"]["rows"][1:]) < details["validation"]["best"]["cosine"]
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_minutes_budget_stops_training(data):
    details = train(perturbed(mlp(), 0.3), mlp(), Distill(steps=10**7, minutes=0.002, patience=None), data)
    assert details["stopped"] == "minutes" and 1 <= details["steps_run"] < 10**7
    assert 0.12 <= details["seconds"] < 30


def test_new_fields_round_trip_and_the_short_form_keeps_working():
    config = Distill(steps=2000, lr=3e-4, minutes=2.5, schedule="constant", augment=False, patience=None,
                     eval_every=10)
    assert from_dict(config.to_dict()) == config
    assert config.to_dict()["minutes"] == 2.5 and config.to_dict()["patience"] is None
    assert parse("distill:300") == [Distill(steps=300)] and parse("distill") == [Distill()]
    assert parse("distill:2000:2.5m")[0] == Distill(steps=2000, minutes=2.5)
    assert config.to_string() == "distill:2000:2.5m" and Distill(steps=300).to_string() == "distill:300"
    with pytest.raises(RecipeError, match="has no field 'patient'"):
        from_dict({**Distill().to_dict(), "patient": 3})
    with pytest.raises(RecipeError, match="needs its unit: distill:300:5m"):
        parse("distill:300:5")
    with pytest.raises(RecipeError, match="schedule must be 'cosine' or 'constant'"):
        Distill(schedule="linear")
    with pytest.raises(RecipeError, match="minutes must be positive"):
        Distill(minutes=0)


def test_augment_keeps_shapes_and_leaves_other_inputs_alone():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 12, 10)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == images.dtype and not torch.equal(out, images)
    for other in (torch.randint(0, 9, (8, 3, 12, 10)), torch.rand(8, 12, 10), torch.rand(8, 16)):
        assert augment(other) is other


def test_augmentation_runs_only_for_image_inputs(data):
    assert train(perturbed(mlp(), 0.3), mlp(), Distill(steps=5), data)["augmented"] is False
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    images = torch.rand(40, 3, 8, 8)
    _, report = apply(cnn, ["prune:0.3", Distill(steps=5)], example_inputs=(images[:1],),
                      calibration=list(images.split(8)))
    distill = report["passes"][-1]
    assert distill["augmented"] is True and distill["device"] in ("cpu", "cuda")
    _, report = apply(cnn, ["prune:0.3", Distill(steps=5, augment=False)], example_inputs=(images[:1],),
                      calibration=list(images.split(8)))
    assert report["passes"][-1]["augmented"] is False


def test_a_distill_dict_written_before_the_schedule_reads_back_as_its_training():
    """A manifest's Distill dict from before schedule/augment/patience existed means the fixed-lr training it ran."""
    old = from_dict({"config": "distill", "version": 1, "steps": 300, "lr": 1e-3, "temperature": 2.0})
    assert (old.schedule, old.augment, old.patience, old.lr) == ("constant", False, None, 1e-3)
    assert from_dict(Distill().to_dict()) == Distill()
