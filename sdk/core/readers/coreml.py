"""Read a saved Core ML model's spec without torch and without the Core ML framework (Linux included).

The converter checks what it wrote with these, and the backend binds its I/O with them; coremltools parses
specs on any platform, so a Linux export host can say what the .mlpackage stores.
"""
from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["feature_specs", "runtime_unavailable_reason", "spec_summary", "weight_storage"]


def runtime_unavailable_reason() -> str | None:
    """Why Core ML cannot run models on this host (None where it can): only macOS/iOS have Core ML."""
    if platform.system() != "Darwin":
        return (f"Core ML runs only on macOS/iOS; this host is {platform.system()} — the bundle was converted "
                "and its spec checked, not run")
    try:
        import coremltools  # noqa: F401
    except ImportError as exc:
        return f"coremltools is not installed ({exc}); pip install coremltools"
    return None

#: MIL tensor dtypes that hold op parameters (shapes, axes, flags), not weights
_PARAMETER_DTYPES = {"INT32", "INT64", "UINT32", "UINT64", "BOOL", "STRING"}
#: the input of each compression op that holds the narrow data (iOS16 names them as attributes, iOS18 as inputs)
_COMPRESSED_DATA = {"constexpr_affine_dequantize": "quantized_data", "constexpr_blockwise_shift_scale": "data",
                    "constexpr_lut_to_dense": "indices", "constexpr_sparse_to_dense": "nonzero_data"}


def spec_summary(model_path: str | Path) -> dict[str, Any]:
    """What a saved Core ML model declares: I/O names, shapes and dtypes, the ML program's ops and weight dtypes.

    `ops` counts the program's operations by type, constants left out; `weight_dtypes` counts the elements
    of its constant tensors (plain and `constexpr_*` compressed ones) by dtype, parameters such as
    shapes and axes left out. Runs anywhere coremltools imports, Linux included.
    """
    from coremltools.models.utils import load_spec
    from coremltools.proto import MIL_pb2

    spec = load_spec(str(model_path))
    summary: dict[str, Any] = {
        "specification_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        **feature_specs(spec.description),
    }
    if summary["model_type"] != "mlProgram":
        return summary
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    main = spec.mlProgram.functions["main"]
    for op in _walk(main.block_specializations[main.opset].operations):
        if _is_const(op):
            for _, value in _values(op):
                tensor = value.type.tensorType
                dtype = MIL_pb2.DataType.Name(tensor.dataType)
                if tensor.rank > 0 and dtype not in _PARAMETER_DTYPES:
                    weights[dtype.lower()] += int(np.prod([d.constant.size for d in tensor.dimensions]))
        if op.type != "const":
            ops[op.type] += 1
    summary |= {"opset": main.opset, "ops": dict(ops.most_common()), "weight_dtypes": dict(weights)}
    return summary


def weight_storage(model_path: str | Path) -> list[dict[str, Any]]:
    """How each weight of an ML program is stored, read from the saved spec.

    A weight is a float constant of rank >= 2 that an op reads (conv/linear filters, embedding tables;
    biases and norm scales are left out). One entry per (op, input): `op` (the op's name), `op_type`,
    `input`, `shape` (the dense weight's), `numel` and `stored`: "float16"/"float32" for a plain
    constant, the narrow data type for a linear quantization ("int8", "int4", ...), "lut_uint<n>" for
    a palettization (n-bit indices into a float lookup table), else the compression op's type.
    """
    from coremltools.models.utils import load_spec
    from coremltools.proto import MIL_pb2

    spec = load_spec(str(model_path))
    if spec.WhichOneof("Type") != "mlProgram":
        return []
    main = spec.mlProgram.functions["main"]
    operations = list(_walk(main.block_specializations[main.opset].operations))
    producers = {output.name: op for op in operations for output in op.outputs}
    entries = []
    for op in operations:
        if _is_const(op):
            continue
        for param, binding in op.inputs.items():
            for argument in binding.arguments:
                source = producers.get(argument.name) if argument.WhichOneof("binding") == "name" else None
                if source is None or not _is_const(source):
                    continue
                tensor = next(o for o in source.outputs if o.name == argument.name).type.tensorType
                if tensor.rank < 2 or not MIL_pb2.DataType.Name(tensor.dataType).startswith("FLOAT"):
                    continue
                shape = [d.constant.size for d in tensor.dimensions]
                entries.append({"op": _name(op), "op_type": op.type, "input": param, "shape": shape,
                                "numel": int(np.prod(shape)), "stored": _stored(source, producers)})
    return entries


def _stored(op: Any, producers: Mapping[str, Any]) -> str:
    from coremltools.proto import MIL_pb2

    values = dict(_values(op, producers))
    if op.type == "const":
        return MIL_pb2.DataType.Name(values["val"].type.tensorType.dataType).lower()
    if op.type == "constexpr_lut_to_dense":
        dims = [d.constant.size for d in values["lut"].type.tensorType.dimensions]
        entries = dims[0] if len(dims) == 1 else dims[-2]  # iOS16: (2**n,); iOS18: (..., 2**n, vector size)
        return f"lut_uint{int(entries).bit_length() - 1}"
    data = values.get(_COMPRESSED_DATA.get(op.type, ""))
    return MIL_pb2.DataType.Name(data.type.tensorType.dataType).lower() if data is not None else op.type


def _is_const(op: Any) -> bool:
    return op.type == "const" or op.type.startswith("constexpr_")


def _values(op: Any, producers: Mapping[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """A constant op's tensor values by name: attributes (const, iOS16 constexpr ops) and inputs bound to
    values (iOS18 constexpr ops); with `producers`, inputs bound to other constants' names too."""
    yield from op.attributes.items()
    for key, binding in op.inputs.items():
        for argument in binding.arguments:
            if argument.WhichOneof("binding") == "value":
                yield key, argument.value
            elif producers is not None and argument.name in producers:
                source = producers[argument.name]
                if source.type == "const":
                    yield key, source.attributes["val"]


def _name(op: Any) -> str:
    name = op.attributes.get("name")
    return name.immediateValue.tensor.strings.values[0] if name is not None else op.outputs[0].name


def _walk(operations: Sequence[Any]) -> Iterator[Any]:
    """Every operation, including those in nested blocks (cond, while_loop)."""
    for op in operations:
        yield op
        for block in op.blocks:
            yield from _walk(block.operations)


def feature_specs(description: Any) -> dict[str, list[dict[str, Any]]]:
    """A model description's inputs and outputs: name, shape and dtype of each multi-array feature."""
    return {"inputs": [_feature(f) for f in description.input], "outputs": [_feature(f) for f in description.output]}


def _feature(feature: Any) -> dict[str, Any]:
    from coremltools.proto import FeatureTypes_pb2

    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return {"name": feature.name, "type": kind}
    array = feature.type.multiArrayType
    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
    return {"name": feature.name, "shape": list(array.shape), "dtype": "float64" if dtype == "double" else dtype}
