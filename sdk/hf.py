"""Hugging Face `transformers` models in `sdk.export`: `task=` picks the inputs and the named outputs.

A `PreTrainedModel` returns a `ModelOutput` (a dict-like object) and takes keyword inputs, which no exporter
accepts. As Optimum's `TasksManager` does, each task fixes the model's input names (built from the model's config
when no example is given) and the output names kept, in order; the model is wrapped in a module that takes those
inputs positionally and returns those outputs as a tuple. The names go into the bundle's manifest under `task`.

>>> sorted(TASKS)
['feature-extraction', 'image-classification', 'text-classification']
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from converters.quant.sensitivity import hf_conv1d
from sdk.core.errors import InvalidInputsError, UnsupportedError, closest

__all__ = ["TASKS", "TaskSpec", "conv1d_as_linear", "is_transformers_model", "prepare"]

#: tokens in the example built for text tasks when no example_inputs are given
TEXT_LENGTH = 16


@dataclass(frozen=True)
class TaskSpec:
    """The inputs a task feeds the model and the outputs it keeps, by name and in order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


TASKS = {
    "image-classification": TaskSpec(("pixel_values",), ("logits",)),
    "feature-extraction": TaskSpec(("input_ids", "attention_mask"), ("last_hidden_state",)),
    "text-classification": TaskSpec(("input_ids", "attention_mask"), ("logits",)),
}
#: tasks other parts of the SDK export (not through `task=` here)
ELSEWHERE = {"text-generation": "LLM export (static KV cache) is its own path; see the LLM docs"}


def is_transformers_model(model: Any) -> bool:
    """True for a `transformers.PreTrainedModel`, checked without importing transformers."""
    return any(cls.__module__.split(".")[0] == "transformers" and cls.__name__ == "PreTrainedModel"
               for cls in type(model).__mro__)


def conv1d_as_linear(model: torch.nn.Module) -> list[str]:
    """Replace, in place, every Hugging Face `Conv1D` (GPT-2's weight layers: weight (in, out), forward = addmm) by
    the equivalent `nn.Linear` (the same weight, transposed); returns the qualified names replaced.

    Why: the toolchains' quantizers find linear layers by their pattern (PT2E's XNNPACKQuantizer annotates
    `aten.linear`, not `addmm`), so a GPT-2 exported as is came out of int8 with 1 of 9 weight matrices
    quantized. Each module keeps its name, so keep_float, sensitivity and the report name the same layers.

    >>> from transformers.pytorch_utils import Conv1D
    >>> m = torch.nn.Sequential(Conv1D(4, 3))
    >>> conv1d_as_linear(m), type(m[0]).__name__, tuple(m[0].weight.shape)
    (['0'], 'Linear', (4, 3))
    """
    conv1d = hf_conv1d()
    if conv1d is None:
        return []
    replaced = [name for name, module in model.named_modules() if isinstance(module, conv1d)]
    linears: dict[int, torch.nn.Linear] = {}  # a Conv1D shared by two parents stays one (shared) Linear
    for parent in model.modules():
        for attr, child in list(parent.named_children()):
            if isinstance(child, conv1d):
                if id(child) not in linears:
                    linear = torch.nn.Linear(child.nx, child.nf, bias=child.bias is not None,
                                             device=child.weight.device, dtype=child.weight.dtype)
                    linear.weight = torch.nn.Parameter(child.weight.detach().t().contiguous(),
                                                       requires_grad=child.weight.requires_grad)
                    linear.bias = child.bias
                    linears[id(child)] = linear.train(child.training)
                setattr(parent, attr, linears[id(child)])
    return replaced


class TaskModule(torch.nn.Module):
    """The Hugging Face model with positional tensor inputs and a tuple of the task's outputs."""

    def __init__(self, model: torch.nn.Module, spec: TaskSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.spec.inputs, inputs)), return_dict=True)
        return tuple(out[name] for name in self.spec.outputs)


# Fixed arity, not *inputs: exporters map dynamic shapes per named forward parameter (OpenVINO's does).
class _OneInput(TaskModule):
    def forward(self, x0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(x0)


class _TwoInputs(TaskModule):
    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(x0, x1)


def _spec(task: str, model: Any) -> TaskSpec:
    if task in ELSEWHERE:
        raise UnsupportedError(f"task={task!r} is not exported through sdk.export(task=...): {ELSEWHERE[task]}")
    if task not in TASKS:
        hint = closest(task, TASKS)
        raise InvalidInputsError(f"unknown task={task!r}{f' (did you mean {hint!r}?)' if hint else ''}; "
                                 f"tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    if task == "feature-extraction" and "pixel_values" in _forward_params(model):
        spec = TaskSpec(("pixel_values",), spec.outputs)  # a vision backbone's features
    return spec


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _example(spec: TaskSpec, config: Any) -> tuple[torch.Tensor, ...]:
    """Inputs shaped from the config: an image of config.image_size, or TEXT_LENGTH tokens of its vocabulary."""
    g = torch.Generator().manual_seed(0)
    out = []
    for name in spec.inputs:
        if name == "pixel_values":
            size = getattr(config, "image_size", 224)
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            out.append(torch.randn(1, getattr(config, "num_channels", 3), h, w, generator=g))
        elif name == "input_ids":
            length = min(TEXT_LENGTH, getattr(config, "max_position_embeddings", TEXT_LENGTH))
            out.append(torch.randint(0, config.vocab_size, (1, length), generator=g))
        elif name == "attention_mask":
            out.append(torch.ones_like(out[spec.inputs.index("input_ids")]))
    return tuple(out)


def prepare(model: Any, example_inputs: Sequence[torch.Tensor] | None, task: str | None
            ) -> tuple[Any, Sequence[torch.Tensor] | None, dict[str, Any]]:
    """(model to export, example inputs, manifest entries): unchanged for a plain nn.Module without `task`."""
    if task is None and not is_transformers_model(model):
        return model, example_inputs, {}
    if not is_transformers_model(model):
        raise InvalidInputsError(f"task={task!r} is for Hugging Face transformers models (PreTrainedModel); got a "
                                 f"{type(model).__name__}: leave task out and give example_inputs")
    if task is None:
        raise InvalidInputsError(f"{type(model).__name__} is a Hugging Face model: give task= (one of "
                                 f"{', '.join(TASKS)}): it says which inputs the model takes and which outputs to keep")
    spec = _spec(task, model)
    if example_inputs is None:
        example_inputs = _example(spec, model.config)
    elif len(example_inputs) != len(spec.inputs):
        raise InvalidInputsError(f"task={task!r} takes {len(spec.inputs)} input(s) ({', '.join(spec.inputs)}), "
                                 f"example_inputs has {len(example_inputs)}")
    model.config.use_cache = False  # no KV cache outputs in an encoder's export
    wrapper = (_OneInput if len(spec.inputs) == 1 else _TwoInputs)(model.eval(), spec)
    return (wrapper.eval(), tuple(example_inputs),
            {"task": {"name": task, "inputs": list(spec.inputs), "outputs": list(spec.outputs)}})
