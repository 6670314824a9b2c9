"""Optimization configs and recipes.

Every optimization is a frozen dataclass with a short string form (`"int8"`, `"prune:0.3"`), in
the manner of torchao's `quantize_(model, Int8WeightOnlyConfig())`. A recipe is an ordered list of
them: model-to-model passes first, then at most one precision/quantization config that the
device's converter applies with the format's own toolchain.

>>> from sdk.core.recipes import parse
>>> [c.to_string() for c in parse("lowrank:0.5, distill, int8")]
['lowrank:0.5', 'distill:300', 'int8']

The string form is for display and the CLI and may drop fields; `to_dict`/`from_dict` are lossless
and versioned, and are what a bundle's manifest records:

>>> from sdk.core.recipes import Distill, from_dict
>>> from_dict(Distill(steps=10, lr=0.1).to_dict()) == Distill(steps=10, lr=0.1)
True
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal, Mapping, Sequence, Union

from sdk.core.errors import RecipeError, UnsupportedRecipeError, closest

if TYPE_CHECKING:
    from sdk.devices import DeviceProfile

__all__ = [
    "Config", "Fp32", "Fp16", "Int8Static", "Int8Dynamic", "Int4Weight", "Palettize",
    "Prune", "LowRank", "DepthwiseSeparable", "Distill", "Tolerance", "Recipe",
    "parse", "resolve", "config_names", "from_dict", "Activations", "PeakKey", "DICT_VERSION",
]

#: How a precision config leaves activations: float, INT8 with calibrated ranges, or INT8 computed per inference.
Activations = Literal["float", "int8-static", "int8-dynamic"]
#: Which peak-compute figure of a device profile (`peak_tops.<key>`) bounds a precision config.
PeakKey = Literal["fp32", "fp16", "int8"]
#: Version of the dict form `Config.to_dict` writes; `from_dict` refuses any other.
DICT_VERSION = 1

_REGISTRY: dict[str, type["Config"]] = {}


def _register(cls: type["Config"]) -> type["Config"]:
    if cls.name in _REGISTRY:
        raise RecipeError(f"config name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def config_names() -> list[str]:
    """The string forms `parse` accepts."""
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class Config:
    """Base of all optimization configs. `kind` is "pass" (torch -> torch) or "precision".

    The class facts say what a config does, so no caller compares names: `quantizes` (stores weights
    in fewer bits), `activations` and `peak_key` (the profile's `peak_tops` figure that bounds it).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    quantizes: ClassVar[bool] = False
    activations: ClassVar[Activations] = "float"
    peak_key: ClassVar[PeakKey | None] = None
    arg_field: ClassVar[str | None] = None  # the field that "name:arg" sets
    #: what a field missing from a stored dict means (fields added after version 1 dicts were written)
    absent_means: ClassVar[dict[str, Any]] = {}
    default_min_cosine: ClassVar[float] = 0.9999

    def to_string(self) -> str:
        if self.arg_field is None:
            return self.name
        value = getattr(self, self.arg_field)
        if value is None:
            return self.name
        return f"{self.name}:{value:g}" if isinstance(value, float) else f"{self.name}:{value}"

    def __str__(self) -> str:
        return self.to_string()

    def to_dict(self) -> dict[str, Any]:
        """Every field, lossless, with the config's name and the dict version (JSON-ready).

        >>> Int8Static(per_channel=False).to_dict()
        {'config': 'int8', 'version': 1, 'per_channel': False, 'symmetric_activations': False}
        """
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "scope" in fields:
            fields["scope"] = None if self.scope is None else [
                [key, None if value is None else value.to_dict()] for key, value in self.scope]
        return {"config": self.name, "version": DICT_VERSION, **fields}

    @classmethod
    def from_arg(cls, arg: str | None) -> "Config":
        if arg is None:
            return cls()
        if cls.arg_field is None:
            raise RecipeError(f"recipe {cls.name!r} takes no argument, got {cls.name}:{arg}")
        field = next(f for f in dataclasses.fields(cls) if f.name == cls.arg_field)
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        try:
            value: Any = int(arg) if kind.startswith("int") else float(arg)
        except ValueError:
            raise RecipeError(f"recipe {cls.name}:{arg}: {arg!r} is not a number ({cls.arg_field})") from None
        return cls(**{cls.arg_field: value})

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise RecipeError(f"{type(self).__name__}: {message}")


# --- precision / quantization (applied by the converter, with the format's own toolchain) ---

@_register
@dataclass(frozen=True)
class Fp32(Config):
    """Keep float32 weights and compute."""

    name: ClassVar[str] = "fp32"
    kind: ClassVar[str] = "precision"
    peak_key: ClassVar[PeakKey | None] = "fp32"


@_register
@dataclass(frozen=True)
class Fp16(Config):
    """Float16 weights and compute where the target supports it."""

    name: ClassVar[str] = "fp16"
    kind: ClassVar[str] = "precision"
    peak_key: ClassVar[PeakKey | None] = "fp16"
    default_min_cosine: ClassVar[float] = 0.999


@_register
@dataclass(frozen=True)
class Bf16(Config):
    """bfloat16 compute where the CPU has it (AVX512_BF16, AMX: recent Xeons, Zen 4), weights stored in float16:
    what OpenVINO's CPU plugin does by default on such a CPU. Elsewhere the plugin computes in f32."""

    name: ClassVar[str] = "bf16"
    kind: ClassVar[str] = "precision"
    peak_key: ClassVar[PeakKey | None] = "fp16"
    default_min_cosine: ClassVar[float] = 0.995


@_register
@dataclass(frozen=True)
class Int8Static(Config):
    """INT8 weights (per-channel, symmetric) and activations calibrated on `calibration` data."""

    name: ClassVar[str] = "int8"
    kind: ClassVar[str] = "precision"
    quantizes: ClassVar[bool] = True
    activations: ClassVar[Activations] = "int8-static"
    peak_key: ClassVar[PeakKey | None] = "int8"
    default_min_cosine: ClassVar[float] = 0.99
    per_channel: bool = True
    symmetric_activations: bool = False


@_register
@dataclass(frozen=True)
class Int8Dynamic(Config):
    """INT8 weights; activations quantized on the fly per inference (no calibration needed)."""

    name: ClassVar[str] = "int8-dynamic"
    kind: ClassVar[str] = "precision"
    quantizes: ClassVar[bool] = True
    activations: ClassVar[Activations] = "int8-dynamic"
    peak_key: ClassVar[PeakKey | None] = "int8"
    default_min_cosine: ClassVar[float] = 0.99


@_register
@dataclass(frozen=True)
class Int4Weight(Config):
    """4-bit group-wise weights (`group_size` values share one scale); activations stay float or INT8."""

    name: ClassVar[str] = "int4"
    kind: ClassVar[str] = "precision"
    quantizes: ClassVar[bool] = True
    peak_key: ClassVar[PeakKey | None] = "int8"
    arg_field: ClassVar[str | None] = "group_size"
    default_min_cosine: ClassVar[float] = 0.97
    group_size: int = 32

    def __post_init__(self) -> None:
        self._check(self.group_size in (16, 32, 64, 128, 256),
                    f"group_size must be 16..256 (power of two), got {self.group_size}")


@_register
@dataclass(frozen=True)
class Palettize(Config):
    """k-means weight clustering to 2**nbits shared values (a lookup table per tensor)."""

    name: ClassVar[str] = "palettize"
    kind: ClassVar[str] = "precision"
    quantizes: ClassVar[bool] = True
    peak_key: ClassVar[PeakKey | None] = "fp16"
    arg_field: ClassVar[str | None] = "nbits"
    default_min_cosine: ClassVar[float] = 0.97
    nbits: int = 4

    def __post_init__(self) -> None:
        self._check(2 <= self.nbits <= 8, f"nbits must be 2..8, got {self.nbits}")


# --- passes (torch -> torch, backend-agnostic) ---

def _scope(config: Config, scope: Any) -> tuple[tuple[str, Config | None], ...] | None:
    """Normalise `{layer name or layer type: config or None}` to a hashable tuple of pairs.

    A key is a module's qualified name (or a dotted prefix of it, e.g. "layers.0"), a layer type
    name ("Conv2d") or the type itself (normalised to its name); a value is a config of the same
    kind, or None to leave the layer alone. Resolution order is in converters/passes/scope.py.
    """
    if scope is None:
        return None
    pairs = []
    for key, value in (scope.items() if hasattr(scope, "items") else scope):
        name = key.__name__ if isinstance(key, type) else key
        if not isinstance(name, str) or not name:
            raise RecipeError(f"{type(config).__name__}.scope: a key must be a layer name or type, got {key!r}")
        if value is not None and (type(value) is not type(config) or value.scope is not None):
            raise RecipeError(f"{type(config).__name__}.scope[{name!r}]: expected None or an unscoped "
                              f"{type(config).__name__}, got {value!r}")
        pairs.append((name, value))
    return tuple(pairs)


@_register
@dataclass(frozen=True)
class Prune(Config):
    """Remove a `sparsity` fraction of channels (structured) or of weights (unstructured).

    `scope` may set another sparsity (or None) per layer; `structured` and `importance` are global.
    """

    name: ClassVar[str] = "prune"
    kind: ClassVar[str] = "pass"
    arg_field: ClassVar[str | None] = "sparsity"
    sparsity: float = 0.3
    structured: bool = True
    importance: str = "l2"
    scope: Any = None

    def __post_init__(self) -> None:
        self._check(0.0 < self.sparsity < 1.0, f"sparsity must be in (0, 1), got {self.sparsity}")
        self._check(self.importance in ("l1", "l2"), f"importance must be 'l1' or 'l2', got {self.importance!r}")
        object.__setattr__(self, "scope", _scope(self, self.scope))
        for key, value in self.scope or ():
            self._check(value is None or (value.structured, value.importance) == (self.structured, self.importance),
                        f"scope[{key!r}] may change only the sparsity; structured and importance are set once per pass")


@_register
@dataclass(frozen=True)
class LowRank(Config):
    """Factor Linear/Conv2d weights by truncated SVD, keeping `ratio` of each layer's parameters or `energy` of
    the spectrum."""

    name: ClassVar[str] = "lowrank"
    kind: ClassVar[str] = "pass"
    arg_field: ClassVar[str | None] = "ratio"
    ratio: float | None = None
    energy: float | None = None
    scope: Any = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.energy is None:
            object.__setattr__(self, "ratio", 0.5)
        self._check((self.ratio is None) != (self.energy is None), "give exactly one of ratio or energy")
        value = self.ratio if self.ratio is not None else self.energy
        self._check(0.0 < value <= 1.0, f"ratio/energy must be in (0, 1], got {value}")
        object.__setattr__(self, "scope", _scope(self, self.scope))


@_register
@dataclass(frozen=True)
class DepthwiseSeparable(Config):
    """Replace dense k x k convolutions by depthwise k x k (`multiplier` filters per input channel) + pointwise 1x1."""

    name: ClassVar[str] = "depthwise"
    kind: ClassVar[str] = "pass"
    arg_field: ClassVar[str | None] = "multiplier"
    multiplier: int = 1
    scope: Any = None

    def __post_init__(self) -> None:
        self._check(self.multiplier >= 1, f"multiplier must be >= 1, got {self.multiplier}")
        object.__setattr__(self, "scope", _scope(self, self.scope))

    def to_string(self) -> str:
        return self.name if self.multiplier == 1 else f"{self.name}:{self.multiplier}"


@_register
@dataclass(frozen=True)
class Distill(Config):
    """Train the transformed model to match the original on the unlabeled calibration inputs.

    Training stops at `steps`, after `minutes` of wall time (None: no time limit), or when the agreement with the
    teacher on a held-out slice, measured every `eval_every` steps, has not improved for `patience` evaluations
    (None: never early); the best weights seen are restored. `schedule="cosine"` warms the lr up over the first 5%
    of `steps` to `lr`, then decays it to 0 at `steps`; "constant" keeps `lr`. The default peak is 3e-3 because a
    decaying lr spends less: at 1e-3, cosine recovered less than constant 1e-3 in 300 steps (docs/passes.md).
    `augment` randomly crops, flips and adds noise to 4-D float inputs (read as N, C, H, W images); other inputs
    are never augmented, and 4-D inputs that are not images want `augment=False`. The string form is
    "distill:<steps>" or "distill:<steps>:<minutes>m".
    """

    name: ClassVar[str] = "distill"
    kind: ClassVar[str] = "pass"
    arg_field: ClassVar[str | None] = "steps"
    #: a dict written before these fields existed (fixed lr, no augmentation, no early stopping) reads back as the
    #: training it recorded, not as today's defaults
    absent_means: ClassVar[dict[str, Any]] = {"schedule": "constant", "augment": False, "patience": None}
    steps: int = 300
    lr: float = 3e-3
    temperature: float = 2.0
    minutes: float | None = None
    schedule: str = "cosine"
    augment: bool = True
    patience: int | None = 5
    eval_every: int = 25

    def __post_init__(self) -> None:
        self._check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        self._check(self.lr > 0 and self.temperature > 0, "lr and temperature must be positive")
        self._check(self.minutes is None or self.minutes > 0, f"minutes must be positive or None, got {self.minutes}")
        self._check(self.schedule in ("cosine", "constant"),
                    f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        self._check(self.patience is None or self.patience >= 1, f"patience must be >= 1 or None, got {self.patience}")
        self._check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")

    def to_string(self) -> str:
        return f"{self.name}:{self.steps}" + ("" if self.minutes is None else f":{self.minutes:g}m")

    @classmethod
    def from_arg(cls, arg: str | None) -> "Distill":
        if arg is None:
            return cls()
        steps, sep, minutes = arg.partition(":")
        if sep and not minutes.endswith("m"):
            raise RecipeError(f"recipe distill:{arg}: the time budget needs its unit: distill:{steps}:{minutes}m")
        try:
            parsed = int(steps), float(minutes[:-1]) if sep else None
        except ValueError:
            raise RecipeError(f"recipe distill:{arg}: expected distill:<steps> or distill:<steps>:<minutes>m, "
                              "e.g. distill:2000:10m") from None
        return cls(steps=parsed[0], minutes=parsed[1])


@dataclass(frozen=True)
class Tolerance:
    """How close the artifact's outputs must be to the fp32 reference (every output, every check).

    >>> Tolerance(min_cosine=0.995).min_cosine
    0.995
    """

    min_cosine: float = 0.9999
    max_abs_err: float | None = None
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_cosine <= 1.0:
            raise RecipeError(f"Tolerance.min_cosine must be in [-1, 1], got {self.min_cosine}")

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        """The checks that are set, as an error message names them: 'min_cosine 0.99, max_abs_err 0.01'."""
        return ", ".join(f"{key} {value:g}" for key, value in self.to_dict().items() if value is not None)


ConfigLike = Union[str, Config]


@dataclass(frozen=True)
class Recipe:
    """An ordered list of configs: passes first, then at most one precision config."""

    configs: tuple[Config, ...]

    @property
    def passes(self) -> tuple[Config, ...]:
        return tuple(c for c in self.configs if c.kind == "pass")

    @property
    def precision(self) -> Config:
        found = [c for c in self.configs if c.kind == "precision"]
        return found[0] if found else Fp32()

    def to_strings(self) -> list[str]:
        return [c.to_string() for c in self.configs]

    def to_dicts(self) -> list[dict[str, Any]]:
        """The lossless form a manifest records (`from_dicts` reads it back)."""
        return [c.to_dict() for c in self.configs]

    @classmethod
    def from_dicts(cls, items: Iterable[Mapping[str, Any]]) -> "Recipe":
        return cls(tuple(from_dict(item) for item in items))

    def tolerance(self, user: Tolerance | None = None) -> Tolerance:
        """The user's tolerance, else the loosest default of the recipe's configs."""
        if user is not None:
            return user
        return Tolerance(min_cosine=min([Fp32.default_min_cosine, *(c.default_min_cosine for c in self.configs)]))


def parse(recipe: ConfigLike | Iterable[ConfigLike] | None) -> list[Config]:
    """Parse strings ("int8", "lowrank:0.5", or "a,b,c") and config objects into a list of configs."""
    if recipe is None:
        return []
    items: list[ConfigLike] = []
    for item in ([recipe] if isinstance(recipe, (str, Config)) else list(recipe)):
        items.extend(p.strip() for p in item.split(",") if p.strip()) if isinstance(item, str) else items.append(item)
    out: list[Config] = []
    for item in items:
        if isinstance(item, Config):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise RecipeError(f"a recipe entry must be a string or a config object, got {type(item).__name__}")
        name, _, arg = item.partition(":")
        name = name.strip().lower()
        if name not in _REGISTRY:
            hint = closest(name, _REGISTRY)
            did_you_mean = f" Did you mean {hint!r}?" if hint else ""
            raise RecipeError(f"unknown recipe entry {item!r}.{did_you_mean} Valid entries: "
                              f"{', '.join(config_names())} (with an argument where it takes one, e.g. 'prune:0.3', "
                              "'lowrank:0.5', 'int4:32', 'palettize:4').")
        out.append(_REGISTRY[name].from_arg(arg.strip() or None))
    return out


def from_dict(data: Mapping[str, Any]) -> Config:
    """The config `Config.to_dict` wrote; unknown names, versions or keys are refused, never dropped.

    >>> from_dict({"config": "int8", "version": 1, "per_channel": False}) == Int8Static(per_channel=False)
    True
    >>> from_dict({"config": "int8", "version": 1, "per_chanel": False})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sdk.core.errors.RecipeError: config 'int8' (Int8Static) has no field 'per_chanel'; its fields: per_channel, ...
    """
    if not isinstance(data, Mapping) or "config" not in data:
        raise RecipeError(f"a config dict needs a 'config' key naming the config, got {data!r}")
    name = data["config"]
    if name not in _REGISTRY:
        raise RecipeError(f"unknown config {name!r} in a config dict; known: {', '.join(config_names())}")
    version = data.get("version", DICT_VERSION)
    if version != DICT_VERSION:
        raise RecipeError(f"config {name!r} dict has version {version!r}; this SDK reads version {DICT_VERSION} "
                          "(export the bundle again with this SDK)")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k not in ("config", "version")}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise RecipeError(f"config {name!r} ({cls.__name__}) has no field {unknown[0]!r}; its fields: "
                          f"{', '.join(sorted(fields)) or 'none'}")
    if values.get("scope") is not None:
        values["scope"] = tuple((key, None if value is None else from_dict(value)) for key, value in values["scope"])
    return cls(**{**cls.absent_means, **values})


def resolve(profile: "DeviceProfile", recipe: ConfigLike | Sequence[ConfigLike] | None) -> Recipe:
    """The recipe to run for `profile`: the user's (validated) or the profile's default.

    >>> import sdk
    >>> resolve(sdk.devices.get("android"), None).to_strings()
    ['fp32']
    """
    configs = parse(recipe) if recipe is not None else parse(list(profile.default_recipe))
    precisions = [c for c in configs if c.kind == "precision"]
    if len(precisions) > 1:
        raise RecipeError(f"a recipe takes at most one precision config, got {', '.join(map(str, precisions))}")
    if precisions and configs.index(precisions[0]) != len(configs) - 1:
        raise RecipeError(f"passes must come before the precision config {precisions[0]} "
                          f"(got {', '.join(map(str, configs))}); quantization is the last step")
    for config in precisions:
        if config.name not in profile.precisions:
            raise UnsupportedRecipeError(config.to_string(), profile.format, profile.id, list(profile.precisions))
    if not precisions:
        configs.append(Fp32() if "fp32" in profile.precisions else parse(profile.precisions[0])[0])
    return Recipe(tuple(configs))
