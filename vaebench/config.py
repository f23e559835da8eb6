"""Typed run configs, validated once at the edge.

A YAML file (or a dict) plus ``key=value`` overrides becomes a :class:`RunConfig`
with every default filled in; any mistake becomes one :class:`ConfigError` line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .components import (ACTIVATIONS, KL_ESTIMATORS, LIKELIHOODS, NETWORKS, OBJECTIVES, OPTIMIZERS, POSTERIORS,
                         SCHEDULES)
from .data import BINARIZERS, DATASETS
from .errors import ConfigError
from .registry import Registry


def registered(registry: Registry) -> AfterValidator:
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(registry.unknown_message(name))
        return name

    return AfterValidator(check)


def _name_shorthand(value: Any) -> Any:
    """Let ``encoder: mlp`` stand for ``encoder: {name: mlp}``."""
    return {"name": value} if isinstance(value, str) else value


def _stack_value(value: Any) -> Any:
    """auto, off or a positive number of runs; YAML reads a bare ``off`` as false, taken as meant."""
    if isinstance(value, bool):
        return "off" if value is False else "auto"
    if value in ("auto", "off") or (isinstance(value, int) and value > 0):
        return value
    raise ValueError(f"train.stack must be auto, off or a positive number of runs, got {value!r}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PosInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0)]


class DataConfig(_Section):
    dataset: Annotated[str, registered(DATASETS)] = "mnist14"
    root: Optional[str] = None  # folder of IDX files; None: the embedded copy or $VAEBENCH_DATA
    binarize: Annotated[str, registered(BINARIZERS)] = "threshold"
    per_class: Optional[PosInt] = 1000  # training images per digit; None: the whole train split
    seed: Seed = 0  # picks the per_class subset
    val_size: Optional[PosInt] = 100  # the first val_size test images; None: all 10,000


class NetworkConfig(_Section):
    name: Annotated[str, registered(NETWORKS)] = "mlp"
    hidden: list[PosInt] = [128]
    activation: Annotated[str, registered(ACTIVATIONS)] = "tanh"


Network = Annotated[NetworkConfig, BeforeValidator(_name_shorthand)]


class ModelConfig(_Section):
    latent: PosInt = 8
    encoder: Network = NetworkConfig()
    decoder: Network = NetworkConfig()
    posterior: Annotated[str, registered(POSTERIORS)] = "sigma"
    likelihood: Annotated[str, registered(LIKELIHOODS)] = "bernoulli"


class ObjectiveConfig(_Section):
    name: Annotated[str, registered(OBJECTIVES)] = "elbo"
    k: PosInt = 1  # z samples per example
    kl: Annotated[str, registered(KL_ESTIMATORS)] = "analytic"
    beta: Annotated[float, Field(ge=0)] = 1.0
    warmup: Annotated[int, Field(ge=0)] = 0  # updates over which the KL weight ramps from 0 to beta


class OptimConfig(_Section):
    name: Annotated[str, registered(OPTIMIZERS)] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: Annotated[str, registered(SCHEDULES)] = "none"  # learning-rate schedule over train.steps


class TrainConfig(_Section):
    steps: PosInt = 10_000  # weight updates
    batch_size: PosInt = 100
    eval_every: PosInt = 100  # updates between validation evaluations
    flush_every: PosInt = 500  # updates between metric writes (at most this much is lost on a kill)
    checkpoint_every: PosInt = 2_000
    threads: Optional[PosInt] = None  # torch intra-op threads; None: one (vaebench.devices.set_threads)
    # fast: stacked hand-written step (vaebench.training.stacked); torch: the autograd Trainer;
    # auto: fast when it supports the config. Same numbers up to float reassociation.
    engine: Literal["auto", "torch", "fast"] = "auto"
    # runs of one shape trained together in a grid: auto (8 on CPU, 256 on CUDA), off, or at most N
    stack: Annotated[Union[Literal["auto", "off"], PosInt], BeforeValidator(_stack_value)] = "auto"


class EvalConfig(_Section):
    """An optional evaluation after a run finishes (vaebench.evaluation); off with no splits."""

    k: PosInt = 5000  # importance samples per image
    splits: list[Literal["test", "val", "train"]] = []
    batch: Optional[PosInt] = None  # images per batch; None: chosen from k


class RunConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "run"  # the results subfolder
    seed: Seed = 0  # initialization, data order and z noise
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    objective: Annotated[ObjectiveConfig, BeforeValidator(_name_shorthand)] = ObjectiveConfig()
    optim: Annotated[OptimConfig, BeforeValidator(_name_shorthand)] = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def result_dict(self) -> dict[str, Any]:
        """The config minus the keys that never change a run's numbers (EXECUTION_KEYS)."""
        d = self.to_dict()
        for key in EXECUTION_KEYS:
            *parents, last = key.split(".")
            node = d
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        return d

    def run_hash(self) -> str:
        """A short stable id of everything that changes the numbers: the same in every process and
        on every machine, blind to the name, the logging cadence and the thread count."""
        blob = json.dumps(self.result_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# Keys that differ only in how a run is executed or logged, never in its numbers: they are left
# out of the run's id, so changing them resumes the same run instead of starting another.
EXECUTION_KEYS = ("name", "train.flush_every", "train.checkpoint_every", "train.threads", "train.engine",
                  "train.stack", "eval")
# Top-level keys of a study file (vaebench.grid); everything else is the base run config.
STUDY_KEYS = ("grid", "zip", "variants", "seeds")


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"YAML syntax error at {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def yaml_value(raw: str) -> Any:
    """A command-line value read as YAML, so numbers, lists and null work; anything else stays text."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def split_override(item: str) -> tuple[str, str]:
    """``a.b=1e-3`` -> ("a.b", "1e-3"), or one ConfigError line."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (or key=a,b,c for an axis), "
                          f"e.g. train.steps=500")
    return key, raw


def parse_override(item: str) -> tuple[str, Any]:
    key, raw = split_override(item)
    return key, yaml_value(raw)


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str):  # shorthand like `objective: iwae`
            child = {"name": child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:i + 1])!r} is not a section")
        node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_dotted(out, key, value)
    return out


def known_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key a run config accepts, sections included."""
    keys = []
    for name, field in (model or RunConfig).model_fields.items():
        full = prefix + name
        keys.append(full)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += known_keys(ann, full + ".")
    return keys


def suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(err: dict[str, Any], source: str) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    where = f" in {source}" if source else ""
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}{where}{suggest(loc, known_keys() + list(STUDY_KEYS))}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if err["type"] == "value_error" or isinstance(got, dict) else f" (got {got!r})"
    return f"invalid value for {loc!r}{where}: {msg}{shown}"


def resolve(raw: dict[str, Any] | RunConfig | None = None, overrides: dict[str, Any] | list[str] | None = None,
            source: str = "") -> RunConfig:
    """Validate a config dict (plus overrides) into a RunConfig, or raise one ConfigError line."""
    if isinstance(raw, RunConfig):
        raw = raw.to_dict()
    data = apply_overrides(raw or {}, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e.errors()[0], source)) from None


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    return resolve(read_yaml(path), overrides, source=str(path))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become strings so they fit in a DataFrame column."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out
