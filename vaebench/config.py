"""Typed run configs, validated once at the edge.

A YAML file (or a dict) plus ``key=value`` overrides becomes a :class:`RunConfig`
with every default filled in; any mistake becomes one :class:`ConfigError` line.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from . import plugins
from .components import (LIKELIHOODS, NETWORKS, OBJECTIVES, OPTIMIZERS, ModelConfig, ObjectiveConfig, OptimConfig)
from .components.optimizers import AdamConfig
from .data import BINARIZERS, DATASETS, content_id
from .data.datasets import data_dim
from .errors import ConfigError
from .registry import (ComponentConfig, Registry, Section, models_in, component, component_of, current, key,
                       section)

__all__ = ["RunConfig", "DataConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig", "TrainConfig",
           "EvalConfig", "KeyInfo", "key", "section", "resolve", "load_config", "key_info", "key_infos",
           "known_keys", "execution_keys", "per_run_keys", "flatten", "stack_key", "differing_keys"]


def registered(registry: Registry) -> AfterValidator:
    """A plain name of a component of ``registry`` (data sets and binarizers: no hyperparameters)."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(registry.unknown_message(name, plugin_hint=True))
        return name

    check.registry = registry  # type: ignore[attr-defined]  (read by key_info: the key names a component)
    return AfterValidator(check)


def _stack_value(value: Any) -> Any:
    """auto, off or a positive number of runs; YAML reads a bare ``off`` as false, taken as meant."""
    if isinstance(value, bool):
        return "off" if value is False else "auto"
    if value in ("auto", "off") or (isinstance(value, int) and value > 0):
        return value
    raise ValueError(f"train.stack must be auto, off or a positive number of runs, got {value!r}")


_Section = Section
PosInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0)]


class DataConfig(_Section):
    dataset: Annotated[str, registered(DATASETS)] = key(
        "mnist14", "mnist14 (embedded, 14x14) or mnist28 (IDX files from data.root or $VAEBENCH_DATA)", "data set",
        in_id_at_default=True)
    root: Optional[str] = key(None, "folder of the four IDX files; null: the embedded copy or $VAEBENCH_DATA. Not "
                              "part of the run id: the files are checked against MNIST's checksums, so any "
                              "folder that loads holds the same images", "data folder", numbers=False)
    binarize: Annotated[str, registered(BINARIZERS)] = key(
        "threshold", "threshold (a pixel is 1 when > 128 of 255), dynamic (a fresh Bernoulli draw each time) or "
        "none (grey levels in [0, 1], for model.likelihood: continuous_bernoulli)",
        "binarization", in_id_at_default=True)
    per_class: Optional[PosInt] = key(1000, "training images per digit; null: the whole train split",
                                      "images per digit", in_id_at_default=True)
    seed: Seed = key(0, "which training images per digit (the per_class subset) and which are held out for "
                     "validation", "data seed", in_id_at_default=True)
    val_from: Literal["train", "test"] = key(
        "train", "where validation images come from: train (held out of the train split, never trained on, "
        "disjoint from test) or test (the first val_size test images, the seed write-up's protocol: they "
        "overlap the test set)", "validation from", before="test")
    val_size: Optional[PosInt] = key(
        10_000, "validation images (10,000: a validation ELBO's standard error of about 0.1 nat); null: every "
        "image held out (val_from: train) or the whole test split (test)", "validation images",
        in_id_at_default=True)


class TrainConfig(_Section):
    steps: PosInt = key(10_000, "weight updates", "training updates", in_id_at_default=True)
    batch_size: PosInt = key(100, "images per update", "batch size", in_id_at_default=True)
    eval_every: PosInt = key(100, "updates between validation evaluations", "eval interval (updates)",
                             in_id_at_default=True)
    flush_every: PosInt = key(500, "updates between metric writes (at most this much is lost on a kill)",
                              "flush interval (updates)", numbers=False)
    checkpoint_every: PosInt = key(2_000, "updates between checkpoints", "checkpoint interval (updates)",
                                   numbers=False)
    threads: Optional[PosInt] = key(None, "torch intra-op threads; null: one (vaebench.devices.set_threads)", "threads",
                                    numbers=False)
    engine: Literal["auto", "fused", "generic", "torch", "fast"] = key(
        "auto", "the engine, as env.json records it: fused (the hand-written step from the components' kernels), "
        "generic (torch.func vmap over a stack), torch (autograd, one run); auto: the first of those that "
        "supports the config; fast: fused or generic, never autograd (the same numbers up to float "
        "reassociation)", "engine", numbers=False)
    stack: Annotated[Union[Literal["auto", "off"], PosInt], BeforeValidator(_stack_value)] = key(
        "auto", "runs of one shape trained together in a study: auto (8 on CPU, 256 on CUDA), off, or at most N",
        "stack size", numbers=False)
    matmul: Literal["exact", "reduced"] = key(
        "exact", "float32 matmul precision while training (validation included): exact, or reduced (bfloat16 "
        "inputs on CPUs with bf16 instructions, TF32 on CUDA; float32 accumulation). Changes the numbers; "
        "the end-of-run evaluation is float32 either way (docs: Engines and speed)", "matmul precision")
    keep_best: bool = key(False, "keep the model of the best validation ELBO as best.pt (evaluated at the end "
                          "too: vaebench.load(reduce='best'))", "keep best checkpoint", numbers=False)


class EvalConfig(_Section):
    """The held-out evaluation after a run finishes (vaebench.evaluation): test ELBO and IW log p(x)."""

    enabled: bool = key(True, "evaluate the test split at the end of training (false: later, with vaebench eval)",
                        "end-of-run evaluation", numbers=False)
    k: PosInt = key(250, "importance samples per image (docs/evaluation.md: why 250)", "eval K (importance samples)",
                    numbers=False)
    splits: list[Literal["test", "val", "train"]] = key(
        ["test"], "splits evaluated after training: any of test, val, train", "eval splits", numbers=False)
    batch: Optional[PosInt] = key(None, "images per batch; null: chosen from k", "eval batch", numbers=False)


class RunConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = key(
        "run", "the results subfolder (the study's name)", "study name", numbers=False, per_run=True)
    imports: list[str] = key(
        [], "plugins imported before validation: module names, or .py files relative to the config file",
        "plugins", numbers=False)
    seed: Seed = key(0, "initialization, data order and z noise", "seed", per_run=True, in_id_at_default=True)
    data: DataConfig = section(DataConfig(), "the images", "data")
    model: ModelConfig = section(ModelConfig(), "the VAE", "model")
    objective: component(OBJECTIVES, "elbo") = section(ObjectiveConfig(), "the training loss", "objective")
    optim: component(OPTIMIZERS, "adam") = section(AdamConfig(), "the optimizer", "optimizer")
    train: TrainConfig = section(TrainConfig(), "the training loop", "training")
    eval: EvalConfig = section(EvalConfig(), "an evaluation after training; off with no splits", "evaluation")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def result_dict(self) -> dict[str, Any]:
        """What the run id hashes: every key that changes the numbers, except keys added since the
        first schema while they are at their default (``key(in_id_at_default=...)``); a component
        left with its name alone is its name, a section left empty goes. The data are identified by
        their content, not their folder (data.root is execution-only): a verified dataset by its name,
        any other by a digest of its images (vaebench.data.content_id)."""
        out: dict[str, Any] = _identity(self)  # type: ignore[assignment]
        out["data"]["root"] = None  # the first schema's ids hashed root: null, and stand
        content = content_id(self.data.dataset, self.data.root)
        if content is not None:
            out["data"]["content"] = content
        return out

    def run_hash(self) -> str:
        """A short stable id of everything that changes the numbers: the same in every process and
        on every machine, blind to the name, the logging cadence and the thread count."""
        blob = json.dumps(self.result_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def stack_key(self) -> str:
        """Runs with equal stack keys may share a stack: every key but the per_run_keys() is equal."""
        return stack_key(self)

    def __reduce__(self):
        # Pickled as its dict (to a worker process or a Ray task): a plugin's config models exist in
        # the other process only once its plugins are imported, which _from_pickle does first.
        return _from_pickle, (self.to_dict(),)


def _from_pickle(d: dict[str, Any]) -> "RunConfig":
    plugins.load(d.get("imports") or [])
    return schema().model_validate(d)


def schema() -> type[RunConfig]:
    """RunConfig with its component unions built from the registries as they are now."""
    return current(RunConfig)  # type: ignore[return-value]


def _facts(field: Any) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _identity(m: BaseModel) -> dict[str, Any] | str:
    dumped = m.model_dump(mode="json")
    if isinstance(dumped, str):  # a component without hyperparameters: its name
        return dumped
    out: dict[str, Any] = {}
    for name, field in type(m).model_fields.items():
        facts, value = _facts(field), getattr(m, name)
        if facts.get("section"):
            sub = _identity(value) if isinstance(value, BaseModel) else dumped[name]
            if sub != {}:
                out[name] = sub
            continue
        if not facts.get("changes_numbers", True):
            continue
        if "before" in facts:
            if dumped[name] == facts["before"]:
                continue
        elif not facts.get("in_id_at_default") and dumped[name] == _default_dump(field):
            continue
        out[name] = _identity(value) if isinstance(value, BaseModel) else dumped[name]
    if isinstance(m, ComponentConfig) and set(out) <= {"name"}:
        return m.name
    return out


def _default_dump(field: Any) -> Any:
    """A field's default as it dumps (a component's default name as its config with its defaults)."""
    default = field.get_default(call_default_factory=True)
    marker = component_of(field)
    if marker is not None and not isinstance(default, BaseModel):
        default = marker.registry.configure(default, marker.default)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json")
    return json.loads(json.dumps(default, default=list))


# -- what each key is: derived from the schema's fields ---------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """One config key (dotted; a section too) and its facts, as its schema field states them."""

    key: str
    description: str
    label: str  # a short human name, e.g. for a figure's axis
    changes_numbers: bool  # part of the run's id; False: execution only (logging, threads, evaluation)
    per_run: bool  # the runs of one stack may differ in it
    default: Any
    section: bool = False
    registry: Optional[Registry] = None  # the components it names, if it names one
    component: bool = False  # a key whose value is a component: its name, or a mapping with its hyperparameters
    owner: str = ""  # the components whose key this is, e.g. "optimizer sgd" (empty: every alternative's)
    before: tuple = ()  # (value,): what runs did before the key existed (registry.key(before=...))


def _alternatives(marker: Any) -> list[tuple[str, type[BaseModel]]]:
    """A component field's config models, its default's first."""
    entries = marker.registry.entries()
    return sorted(((e.name, e.config) for e in entries), key=lambda ne: ne[0] != marker.default)


_INFOS: dict[int, dict[str, KeyInfo]] = {}


def _infos() -> dict[str, KeyInfo]:
    from .registry import VERSION

    if VERSION[0] in _INFOS:
        return _INFOS[VERSION[0]]
    out: dict[str, KeyInfo] = {}

    def add(info: KeyInfo) -> None:
        if info.key not in out or out[info.key] is None:
            out[info.key] = info

    def walk(model: type[BaseModel], prefix: str, skip_name: bool = False, owner: str = "",
             name_registry: Optional[Registry] = None) -> list[KeyInfo]:
        leaves: list[KeyInfo] = []
        for name, field in model.model_fields.items():
            if skip_name and name == "name":
                continue
            full, facts = prefix + name, _facts(field)
            if "label" not in facts:  # a user's config model with a plain field: its name is its label
                facts = {"label": name.replace("_", " "), **facts}
            if not field.description and not facts.get("section"):
                field = copy.copy(field)
                field.description = f"{name} (no description: declare it with vaebench.registry.key)"
            marker = component_of(field)
            default = field.get_default(call_default_factory=True)
            shown_default = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
            alts = _alternatives(marker) if marker else []
            if facts.get("section"):
                out.setdefault(full, None)  # type: ignore[arg-type]  (schema order: the section before its keys)
                models = alts or [("", m) for m in models_in(field.annotation)]
                children: list[KeyInfo] = []
                for alt, sub in models:
                    whose = "" if not marker or alt == marker.default else f"{marker.registry.kind} {alt}"
                    children += walk(sub, full + ".", owner=whose, name_registry=marker.registry if marker else None)
                add(KeyInfo(full, field.description, str(facts["label"]), any(c.changes_numbers for c in children),
                            all(c.per_run for c in children), shown_default, section=True,
                            registry=marker.registry if marker else None))
                leaves += children
                continue
            registry = marker.registry if marker else next(
                (m.func.registry for m in field.metadata if hasattr(getattr(m, "func", None), "registry")), None)
            if name == "name" and name_registry is not None:
                registry = name_registry
            info = KeyInfo(full, field.description, str(facts["label"]), bool(facts.get("changes_numbers", True)),
                           bool(facts.get("per_run", False)), shown_default, registry=registry,
                           component=marker is not None, owner=owner if name != "name" else "",
                           before=(facts["before"],) if "before" in facts else ())
            add(info)
            leaves.append(info)
            for alt, sub in alts:
                leaves += walk(sub, full + ".", skip_name=True, owner=f"{marker.registry.kind} {alt}")
        return leaves

    walk(schema(), "")
    _INFOS.clear()
    _INFOS[VERSION[0]] = out
    return out


def key_info(key: str) -> KeyInfo:
    """The facts of a dotted config key (``objective.k``) or section (``model.encoder``)."""
    try:
        return _infos()[key]
    except KeyError:
        raise ConfigError(f"{key!r} is not a config key{suggest(key, known_keys())}") from None


def key_infos() -> list[KeyInfo]:
    """Every key, sections included, in the schema's order (every component's keys)."""
    return list(_infos().values())


def execution_keys() -> tuple[str, ...]:
    """Keys that never change a run's numbers (left out of its id: changing one resumes the same run)."""
    return tuple(i.key for i in key_infos() if not i.section and not i.changes_numbers)


def per_run_keys() -> tuple[str, ...]:
    """Keys in which the runs of one stack may differ; every other key is shared by the stack."""
    return tuple(i.key for i in key_infos() if not i.section and i.per_run)


def component_keys() -> frozenset[str]:
    """Keys whose value is a component given as a name or a mapping (``model.encoder.activation``):
    flattened, the key holds the name and ``key.<hyperparameter>`` each hyperparameter."""
    from .registry import VERSION

    if _COMPONENT_KEYS.get("version") != VERSION[0]:
        _COMPONENT_KEYS.update(version=VERSION[0], keys=frozenset(i.key for i in key_infos()
                                                                    if i.component and not i.section))
    return _COMPONENT_KEYS["keys"]


_COMPONENT_KEYS: dict[str, Any] = {}


def is_execution_key(key: str) -> bool:
    """Whether a config key (or a column named by one, even of an older or newer config) never
    changes a run's numbers: its own fact, else its nearest known section's."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        info = _infos().get(".".join(parts[:n]))
        if info is not None:
            return not info.changes_numbers
    return False


def component_kinds() -> dict[str, tuple[Registry, list[str]]]:
    """Each kind of component a config names: its registry and the keys that choose one."""
    kinds: dict[str, tuple[Registry, list[str]]] = {}
    for info in key_infos():
        if info.registry is not None and not info.section:
            kinds.setdefault(info.registry.kind, (info.registry, []))[1].append(info.key)
    return kinds


def stack_key(cfg: RunConfig, shared: tuple[str, ...] = ()) -> str:
    """Runs with equal keys may share a stack: equal in every key but the per-run ones (and equal
    even in those under the ``shared`` sections). The one place stack compatibility is decided."""
    allowed = set(per_run_keys())
    flat = flatten(cfg.to_dict())
    return json.dumps({k: v for k, v in sorted(flat.items()) if k not in allowed or k.startswith(shared)},
                      default=str)


def differing_keys(cfgs: list[RunConfig], shared: tuple[str, ...] = ()) -> list[str]:
    """The keys in which ``cfgs`` differ but may not share a stack (stack_key's rule, key by key)."""
    flats = [flatten(c.to_dict()) for c in cfgs]
    allowed = set(per_run_keys())
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if (k not in allowed or k.startswith(shared))
            and len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


# Top-level keys of a study file (vaebench.grid); everything else is the base run config.
STUDY_KEYS = ("grid", "zip", "variants", "seeds")


# Bounds on what a config file may be: it is small text, so anything past these is a mistake or an attack
# (a "billion laughs" alias bomb expands to gigabytes while the config is copied).
MAX_YAML_BYTES = 1_000_000
MAX_YAML_DEPTH = 32  # nested sections and lists
MAX_YAML_VALUES = 100_000  # values after aliases are expanded


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects duplicate keys and nesting past MAX_YAML_DEPTH."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class says it is unhashable
            if key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                     f"(first at line {seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _count_values(data: Any, where: str) -> None:
    """Raise when ``data`` holds more than MAX_YAML_VALUES values with its aliases expanded."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_YAML_VALUES:,} values (YAML aliases "
                              f"repeating one another?); a config is a few dozen keys")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_yaml_text(text: str, where: str) -> Any:
    """YAML text as Python values, within the bounds above, or one ConfigError line."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where} is {len(text):,} characters; a config may have at most {MAX_YAML_BYTES:,}")
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = e.problem or str(e).splitlines()[0]
        raise ConfigError(f"YAML syntax error at {at}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {where}: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply; a config has at most {MAX_YAML_DEPTH} levels") from None
    _count_values(data, where)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" if not p.is_dir() else f"{p} is a folder, not a config file")
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{p} is {p.stat().st_size:,} bytes; a config may have at most {MAX_YAML_BYTES:,}")
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text; is it a config file?") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    data = load_yaml_text(text, str(p))
    if data is None:
        raise ConfigError(f"{p} is empty; write the keys to change (e.g. train.steps) or copy "
                          f"experiments/baseline.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def yaml_value(raw: str, where: str = "a --set value") -> Any:
    """A command-line value read as YAML, so numbers, lists and null work; anything else stays text."""
    if not raw.strip():
        return ""
    try:
        return load_yaml_text(raw, where)
    except ConfigError as e:
        if "YAML syntax error" in str(e):
            return raw
        raise


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
    """``raw`` with each override set. Setting a component's name (``optim.name=sgd``) replaces the
    component, as a Hydra config group does: keys of the one before that the new one lacks go
    (``optim.betas`` of adam); any other key stays, and is checked against the new one."""
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    comps = None
    for key, value in items:
        path, _, last = key.rpartition(".")
        if last == "name" and path and comps is None:
            comps = _component_infos()
        info = comps.get(path) if last == "name" and comps else None
        before = _get(out, path) if info is not None else None
        old = before.get("name") if isinstance(before, dict) else before  # before it is set
        set_dotted(out, key, value)
        if info is not None and isinstance(value, str) and value in info.registry:
            default = info.default.get("name") if isinstance(info.default, dict) else info.default
            old = old or default
            if old != value and old in info.registry:
                node = _get(out, path)
                gone = set(info.registry.config(old).model_fields) - set(info.registry.config(value).model_fields)
                for k in gone:
                    node.pop(k, None)
    return out


def _get(d: dict[str, Any], key: str) -> Any:
    node: Any = d
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def known_keys() -> list[str]:
    """Every dotted key a run config accepts, sections included."""
    return list(_infos())


def suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _component_infos() -> dict[str, KeyInfo]:
    """The keys and sections whose value is a component of a registry, by dotted path."""
    return {i.key: i for i in key_infos() if i.registry is not None and (i.component or i.section)}


def _key_of(loc: tuple) -> tuple[str, tuple[str, Registry, str] | None]:
    """A pydantic error location as a dotted config key, without the tags of component unions
    (``("optim", "sgd", "momentm")`` -> "optim.momentm"), and the innermost component selected
    where the error is, as (its path, its registry, its name), if it is inside one."""
    comps = _component_infos()
    parts: list[str] = []
    owner, skip = None, False
    for p in loc:
        if skip:
            skip = False
            path = ".".join(parts)
            if isinstance(p, str) and p in comps[path].registry:
                owner = (path, comps[path].registry, p)
                continue
        parts.append(str(p))
        skip = ".".join(parts) in comps
    return ".".join(parts), owner


def _describe(err: dict[str, Any], source: str) -> str:
    loc, owner = _key_of(err["loc"])
    where = f" in {source}" if source else ""
    if err["type"] == "extra_forbidden":
        whose = f"{owner[1].kind} {owner[2]}" if owner else None
        if loc in _infos() and owner:  # another component's key
            other = _infos()[loc].owner
            hint = f"; the {whose} has no such key" + (f" (the {other} has)" if other else "")
        else:
            # the selected component's own keys first, then every key a config accepts
            mine = [f"{owner[0]}.{f}" for f in owner[1].config(owner[2]).model_fields] if owner else known_keys()
            hint = suggest(loc, mine) or suggest(loc, known_keys() + list(STUDY_KEYS))
        return f"unknown key {loc!r}{where}{f' (for the {whose})' if owner and 'has no such key' not in hint else ''}{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if err["type"] == "value_error" or isinstance(got, dict) else f" (got {got!r})"
    return f"invalid value for {loc!r}{where}: {msg}{shown}"


MAX_ERROR_LINES = 3


def _printable(text: Any) -> str:
    """User text as one printable line: a key like '\\x1e0' would otherwise split an error in two."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def join_errors(items: list[tuple[str, str]]) -> str:
    """Every error of a config at once, in at most three lines: (key, message) pairs; past three,
    the first two and ``... and N more: key, key``."""
    items = [(_printable(k), _printable(msg)) for k, msg in items]
    if len(items) <= MAX_ERROR_LINES:
        return "\n".join(msg for _, msg in items)
    rest = [k for k, _ in items[MAX_ERROR_LINES - 1:]]
    return "\n".join([*(msg for _, msg in items[:MAX_ERROR_LINES - 1]),
                      f"... and {len(rest)} more: {', '.join(rest)}"])


def _imports(data: dict[str, Any], base: str | Path | None, extra: list[str] | tuple[str, ...],
             source: str) -> None:
    """Resolve and import the config's plugins (and ``extra`` ones, from the command line) before the
    config is validated, so its component names can be theirs; record them resolved in ``data``."""
    items = data.get("imports")
    if isinstance(items, str):
        items = [items]
    if items is not None and not isinstance(items, list):
        raise ConfigError(f"invalid value for 'imports'{f' in {source}' if source else ''}: give a list of "
                          f"module names or .py files, got {items!r}")
    where = f"imports in {source}" if source else "imports"
    resolved = plugins.resolve(items or [], base, where)
    resolved += [i for i in plugins.resolve(extra, None, "--import") if i not in resolved]
    plugins.load(resolved)
    if resolved or "imports" in data:
        data["imports"] = resolved


def load_imports(raw: dict[str, Any], base: str | Path | None = None,
                 extra: list[str] | tuple[str, ...] = (), source: str = "") -> None:
    """Import the plugins a config dict names (and ``extra`` ones) without validating it."""
    _imports(dict(raw), base, extra, source)


def resolve(raw: dict[str, Any] | RunConfig | None = None, overrides: dict[str, Any] | list[str] | None = None,
            source: str = "", base: str | Path | None = None,
            imports: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Validate a config dict (plus overrides) into a RunConfig, or raise one ConfigError of every
    mistake (at most three lines). Its plugins (``imports``, relative to ``base``, the config file's
    folder, plus ``imports`` given here, relative to the current directory) are imported first."""
    if isinstance(raw, RunConfig):
        raw = raw.to_dict()
    data = apply_overrides(raw or {}, overrides)
    _imports(data, base, imports, source)
    try:
        cfg = schema().model_validate(data)
    except ValidationError as e:
        seen: dict[str, str] = {}
        for err in e.errors():
            seen.setdefault(_key_of(err["loc"])[0], _describe(err, source))
        raise ConfigError(join_errors(list(seen.items()))) from None
    return check_pixels(check_fits(cfg, source), source)


# What a run may ask for: parameters and the floats of one step's activations. Past these it cannot
# fit in memory (or finish), and it is far beyond any MNIST VAE; the limits are named in the error.
MAX_PARAMETERS = 100_000_000
MAX_ACTIVATIONS = 500_000_000
MAX_DATA_DIM = 28 * 28  # the largest dataset's image


def _network_size(net: Any, encoder: bool, latent: int, dim: int, where: str) -> tuple[int, int, str]:
    """(parameters, the widest layer's values per sample, how the error names it) of the encoder's or
    the decoder's config: its own count where it offers ``parameters(n_in, n_out)`` (and ``widest``),
    at the dataset's width ``dim`` (either may raise a ConfigError for widths it cannot take, e.g. a
    conv's image side), else an MLP's from its ``hidden`` list, bounded at the largest image."""
    if callable(getattr(net, "parameters", None)):
        n_in, n_out = (dim, 2 * latent) if encoder else (latent, dim)
        try:
            params = int(net.parameters(n_in, n_out))
            widest = net.widest(n_in, n_out) if callable(getattr(net, "widest", None)) else max(n_in, n_out)
        except ConfigError as e:  # "model.encoder.channels: ..." -> "model.encoder.channels in FILE: ..."
            raise ConfigError(str(e).replace(": ", f"{where}: ", 1)) from None
        return params, int(widest), f"={net}"
    n_in, n_out = (MAX_DATA_DIM, 2 * latent) if encoder else (latent, MAX_DATA_DIM)
    hidden = list(getattr(net, "hidden", None) or [])
    widths = [n_in, *hidden, n_out]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:])), max(widths), f".hidden={hidden}"


def check_fits(cfg: RunConfig, source: str = "") -> RunConfig:
    """Reject sizes that cannot fit, naming the keys and the limit; return ``cfg``."""
    m, where = cfg.model, f" in {source}" if source else ""
    latent = m.latent
    dim = data_dim(cfg.data.dataset, load=False) or MAX_DATA_DIM  # the dataset's declared width
    enc_p, enc_w, enc = _network_size(m.encoder, True, latent, dim, where)
    dec_p, dec_w, dec = _network_size(m.decoder, False, latent, dim, where)
    params = enc_p + dec_p
    if params > MAX_PARAMETERS:
        raise ConfigError(f"model{where} is too large: model.latent={latent}, model.encoder{enc} and "
                          f"model.decoder{dec} give {params:,} parameters; the limit is {MAX_PARAMETERS:,}")
    widest = max(enc_w, dec_w)
    for key, rows in (("objective.k", cfg.train.batch_size * getattr(cfg.objective, "k", 1)),
                      ("eval.k", cfg.eval.k * (cfg.eval.batch or 1))):
        if rows * widest > MAX_ACTIVATIONS:
            what = ("train.batch_size x objective.k" if key == "objective.k" else "eval.k x eval.batch")
            raise ConfigError(f"{key}{where} is too large: {what} = {rows:,} samples of up to {widest:,} values "
                              f"each need {rows * widest:,} floats at once; the limit is {MAX_ACTIVATIONS:,}")
    return cfg


# A stack's update costs about this many multiply-adds of launches and Python besides its matmuls
# (one core: ~0.5 ms at ~20 GFLOP/s; benchmarks/throughput.py), whatever its number of runs.
STEP_OVERHEAD = 1e7


def work(cfg: RunConfig) -> float:
    """A run's estimated cost in matmul multiply-adds: its updates (forward and twice that back),
    its validations and its end-of-run evaluation. vaebench.grid orders and splits a study's jobs
    by it, so only its ratios between runs matter."""
    m = cfg.model
    dim = data_dim(cfg.data.dataset, load=False) or MAX_DATA_DIM

    def size(net: Any, encoder: bool) -> int:
        n_in, n_out = (dim, 2 * m.latent) if encoder else (m.latent, dim)
        if callable(getattr(net, "parameters", None)):
            try:
                return int(net.parameters(n_in, n_out))
            except (ConfigError, TypeError, ValueError):
                return n_in * n_out
        widths = [n_in, *list(getattr(net, "hidden", None) or []), n_out]
        return sum(a * b for a, b in zip(widths, widths[1:]))

    enc, dec = size(m.encoder, True), size(m.decoder, False)
    k = int(getattr(cfg.objective, "k", 1) or 1)
    t = cfg.train
    updates = t.steps * 3 * t.batch_size * (enc + k * dec)
    val = (t.steps // t.eval_every + 1) * (cfg.data.val_size or 10_000) * (enc + k * dec)
    evals = len(cfg.eval.splits) * 10_000 * (enc + cfg.eval.k * dec) if cfg.eval.enabled else 0
    return float(updates + val + evals)


def check_pixels(cfg: RunConfig, source: str = "") -> RunConfig:
    """Refuse a likelihood of 0/1 pixels (``binary_only = True``, as bernoulli) on a binarizer that
    keeps grey levels (``binary = False``, as none): its log p(x) would be no log-probability. A
    component without the attribute is not refused; return ``cfg``."""
    lik, binarize = cfg.model.likelihood.name, cfg.data.binarize
    if (getattr(LIKELIHOODS.get(lik), "binary_only", None) is not True
            or getattr(BINARIZERS.get(binarize), "binary", None) is not False):
        return cfg
    grey = "|".join(n for n in LIKELIHOODS if getattr(LIKELIHOODS.get(n), "binary_only", None) is False)
    binary = "|".join(n for n in BINARIZERS if getattr(BINARIZERS.get(n), "binary", None) is True)
    fixes = [f"model.likelihood: {grey}" if grey else "", f"data.binarize: {binary}" if binary else ""]
    fix = f"; use {fixes[0]} (or {fixes[1]})" if all(fixes) else "".join(f"; use {f}" for f in fixes if f)
    where = f" in {source}" if source else ""
    raise ConfigError(f"model.likelihood: {lik} needs binary pixels, but data.binarize: {binarize} keeps grey "
                      f"levels{fix}{where}")


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
                imports: list[str] | tuple[str, ...] = ()) -> RunConfig:
    return resolve(read_yaml(path), overrides, source=str(path), base=Path(path).parent, imports=imports)


def saved(d: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config (config.yaml, every key of its day filled in) as this schema reads it: a
    key added since with a new default (``key(before=...)``) gets what those runs did, not the default."""
    for info in key_infos():
        if info.before and not info.section:
            *parents, leaf = info.key.split(".")
            node: Any = d
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf not in node:
                node[leaf] = info.before[0]
    return d


def flatten(d: dict[str, Any], prefix: str = "", tuples: bool = False) -> dict[str, Any]:
    """{"a": {"b": [1]}} -> {"a.b": "[1]"}: dotted keys; lists become JSON strings (comparable
    across runs), or with ``tuples`` tuples (readable and hashable, for categorical columns). A key
    whose value is a component (component_keys()) holds its name, given as a name or a mapping:
    ``model.encoder.activation`` is "leaky" and ``model.encoder.activation.slope`` 0.2."""
    return _flatten(d, prefix, tuples, component_keys())


def _flatten(d: dict[str, Any], prefix: str, tuples: bool, comps: frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if key in comps and "name" in v:
                out[key] = v["name"]
                v = {n: x for n, x in v.items() if n != "name"}
            out.update(_flatten(v, key + ".", tuples, comps))
        elif isinstance(v, (list, tuple)):
            out[key] = tuple(v) if tuples else json.dumps(list(v))
        else:
            out[key] = v
    return out
