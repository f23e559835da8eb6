"""Components chosen by name from a config, each a contract: a config model, a build function, kernels.

A component is registered with a decorator, so adding one never touches the trainer:

    @ACTIVATIONS.register("leaky")
    class Leaky(nn.Module):
        def __init__(self, slope: float = 0.01): ...

Its hyperparameters are its config model's fields: declared with ``config=`` (a
:class:`ComponentConfig` subclass whose fields use :func:`key`, so each states its description,
label and facts once), or derived from the signature, as timm's ``@register_model`` functions take
their kwargs: every parameter with a default that is not one of the registry's call arguments
(``context``). A config section then validates against the model its ``name`` selects
(vaebench.config assembles the union from the registries, plugins included), and the component is
built by ``Registry.build(cfg, **context)``. Kernels a fast engine may run instead of the
component's own math are declared beside it (vaebench.components.kernels).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_serializer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, core_schema

from .errors import UnknownComponentError

T = TypeVar("T")

# Bumped whenever any registry gains an entry: vaebench.config rebuilds its schema when it changed.
VERSION = [0]


_UNSET = object()


def key(default: Any, description: str, label: str, *, numbers: bool = True, per_run: bool = False,
        in_id_at_default: bool = False, before: Any = _UNSET, **field: Any) -> Any:
    """A config key with its facts, stated once here and derived everywhere else (the run id, stacks,
    `vaebench config`, report axes): ``numbers``: does it change a run's numbers (and so its id)?
    ``per_run``: may the runs of one stack differ in it? ``label``: a short name for an axis.
    ``in_id_at_default``: does the run id name the key while it is at its default? True only for the
    keys of the first schema (their ids stand); any key added since, a plugin's included, is left
    out of the id at its default, so adding a key never changes an existing run's id.
    ``before``: for a key added with a default other than what runs did before it existed: that old
    behavior. The id leaves the key out at ``before`` instead of at its default, and a saved run
    config without the key reads as ``before`` (vaebench.config.saved), so old runs keep their ids
    and their meaning."""
    extra = {"label": label, "changes_numbers": numbers, "per_run": per_run, "in_id_at_default": in_id_at_default}
    if before is not _UNSET:
        extra["before"] = before
    return Field(default, description=description, json_schema_extra=extra, **field)


def about(description: str, label: str, *, numbers: bool = True, per_run: bool = False) -> Any:
    """A hyperparameter's facts for a component without a config model: ``slope: Annotated[float,
    about("the negative side's slope", "leaky slope")] = 0.01`` (the default stays in the signature)."""
    return key(PydanticUndefined, description, label, numbers=numbers, per_run=per_run)


def section(default: Any, description: str, label: str) -> Any:
    """A section's facts follow from its keys: it changes the numbers if any key does, and may differ
    within a stack only if every key may."""
    return Field(default, description=description, json_schema_extra={"label": label, "section": True})


class Section(BaseModel):
    # allow_inf_nan=False: .inf or .nan is never a learning rate, a beta or an eps
    # validate_default: a component field's default (a name) becomes its config like any given value
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        built_now = globals().get("_built_now")  # defined below: ComponentConfig itself has no unions
        if built_now is not None:
            built_now(cls)


class ComponentConfig(Section):
    """The config of one component: ``name`` selects it, the other fields are its hyperparameters.

    A component without hyperparameters is written as its name alone (``activation: tanh``), and a
    name alone stands for the component with its defaults."""

    name: str = key("", "the component's registered name", "name", in_id_at_default=True)

    def __eq__(self, other: Any) -> bool:
        # a name stands for the component with its defaults: cfg.objective.kl == "monte_carlo"
        if isinstance(other, str):
            return self.name == other and all(getattr(self, f) == _default(fi)
                                              for f, fi in type(self).model_fields.items() if f != "name")
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self.name)  # equal configs (and a name equal to one) share their name

    def __str__(self) -> str:
        params = self.params()
        inner = ", ".join(f"{k}: {v}" for k, v in params.items())
        return self.name if not params else f"{{name: {self.name}, {inner}}}"

    def params(self) -> dict[str, Any]:
        """The hyperparameters (every field but name), as values (nested components as configs)."""
        return {f: getattr(self, f) for f in type(self).model_fields if f != "name"}

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        if len(type(self).model_fields) == 1:
            return self.name
        return handler(self)


def _default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


@dataclass
class Entry(Generic[T]):
    """One registered component: its object, its config model and how to build it."""

    name: str
    obj: T
    config: type[ComponentConfig]
    build: Callable[..., Any]
    module: str


class Registry(Generic[T]):
    """A named table of components of one kind (activations, KL estimators, ...).

    ``context``: the arguments the kind is called or constructed with by vaebench (never config
    keys), e.g. a network's ``n_in`` and ``n_out``; ``exclude``: parameters that are never
    hyperparameters (torch modules' ``inplace``)."""

    def __init__(self, kind: str, context: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                 label: str | None = None, base: type | None = None):
        self.kind = kind
        self.base = base or ComponentConfig  # what a derived config model subclasses
        self.context, self.exclude = tuple(context), tuple(exclude)
        self.label = label or kind
        self.version = 0  # bumped by each registration: a config model's union is rebuilt when it moved
        self._items: dict[str, Entry[T]] = {}

    def register(self, name: str, *, config: type[ComponentConfig] | None = None,
                 build: Callable[..., Any] | None = None) -> Callable[[T], T]:
        """Register ``obj`` under ``name``; ``config``: its config model (default: derived from its
        signature); ``build(cfg, **context)``: how to make it (default: ``obj(**context, **params)``
        for a class, ``obj`` with its hyperparameters bound for a function)."""
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", name):
            raise ValueError(f"{self.kind} name {name!r} must be a word (letters, digits, _ . -)")

        def decorate(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and old.obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            model = config if config is not None else derive_config(self, name, obj)
            if not (isinstance(model, type) and issubclass(model, self.base)):
                raise TypeError(f"{self.kind} {name!r}: config must subclass {self.base.__name__}")
            self._items[name] = Entry(name, obj, model, build or functools.partial(default_build, obj),
                                      getattr(obj, "__module__", "") or "")
            VERSION[0] += 1
            self.version += 1
            return obj

        return decorate

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownComponentError(self.unknown_message(name)) from None

    def config(self, name: str) -> type[ComponentConfig]:
        return self.entry(name).config

    def configure(self, value: Any = None, default: str | None = None) -> ComponentConfig:
        """A name, a dict or a config as this kind's validated config (a name alone: its defaults)."""
        if isinstance(value, ComponentConfig):
            return value
        data = {"name": value} if isinstance(value, str) else dict(value or {})
        data.setdefault("name", default)
        return self.config(data["name"]).model_validate(data)

    def build(self, cfg: Any, **context: Any) -> Any:
        """The component ``cfg`` (a config, a dict or a name) selects, built with ``context``."""
        cfg = self.configure(cfg)
        return self.entry(cfg.name).build(cfg, **context)

    def unknown_message(self, name: Any, plugin_hint: bool = False) -> str:
        """One line: the name no entry has, the known ones, the closest; with ``plugin_hint``,
        how a config brings its own."""
        known = ", ".join(sorted(self._items)) or "none"
        close = difflib.get_close_matches(str(name), list(self._items), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        own = " Your own? Name its file in imports: or --import." if plugin_hint else ""
        return f"unknown {self.kind} {name!r}; known: {known}.{hint}{own}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def entries(self) -> list[Entry[T]]:
        return [self._items[n] for n in sorted(self._items)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def default_build(obj: Any, cfg: ComponentConfig, **context: Any) -> Any:
    """A class: an instance made with the context and the hyperparameters. A function: itself, or
    with its hyperparameters bound (functools.partial; its kernels get the same keywords)."""
    params = cfg.params()
    if isinstance(obj, type):
        return obj(**context, **params)
    return functools.partial(obj, **params) if params else obj


def derive_config(registry: Registry, name: str, obj: Any) -> type[ComponentConfig]:
    """The config model of a component that declares none: one field per parameter of its
    constructor (a class) or its keyword parameters (a function) that has a default and is not a
    call argument of its kind; a parameter's ``Annotated[type, key(...)]`` states its facts."""
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        sig = inspect.signature(target)
        hints = typing.get_type_hints(target, include_extras=True)
    except (TypeError, ValueError, NameError):
        sig, hints = None, {}
    fields: dict[str, Any] = {}
    params = list(sig.parameters.values()) if sig else []
    if isinstance(obj, type) and params and params[0].name == "self":
        params = params[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in registry.context or p.name in registry.exclude:
            continue
        if p.default is p.empty:
            if not isinstance(obj, type) and p.kind != p.KEYWORD_ONLY:
                continue  # a function's leading data arguments (mu, sigma, z, ...)
            raise TypeError(f"{registry.kind} {name!r}: parameter {p.name!r} has no default; give it one "
                            f"(it becomes the config key's default) or declare config=")
        ann = hints.get(p.name, p.annotation)
        info = None
        if typing.get_origin(ann) is typing.Annotated:
            base, *meta = typing.get_args(ann)
            info = next((m for m in meta if isinstance(m, FieldInfo)), None)
            ann = base
        if ann is p.empty:
            ann = Any if p.default is None else type(p.default)
        if p.default is None and ann is not Any:
            ann = Optional[ann]
        if info is not None:
            extra = dict(info.json_schema_extra or {}) if isinstance(info.json_schema_extra, dict) else {}
            fld = key(p.default, info.description or f"{p.name} of the {registry.kind} {name}",
                      str(extra.get("label", p.name)), numbers=bool(extra.get("changes_numbers", True)),
                      per_run=bool(extra.get("per_run", False)))
        else:
            fld = key(p.default, f"{p.name} of the {registry.kind} {name}", p.name)
        fields[p.name] = (ann, fld)
    cls_name = "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]+", name) if w) + "Config"
    model = create_model(cls_name, __base__=registry.base, __module__=getattr(obj, "__module__", __name__),
                         **fields)
    model.__doc__ = f"The {registry.kind} {name!r}'s hyperparameters, from its signature."
    return model


class Component:
    """Marks a config field whose value is a component of ``registry`` (a name or a dict with a
    ``name``): it validates against the config model that name selects. The union is built from the
    registry when the schema is (re)built, so plugins registered since are included."""

    def __init__(self, registry: Registry, default: str):
        self.registry, self.default = registry, default

    def normalize(self, value: Any) -> Any:
        if isinstance(value, ComponentConfig):
            return value
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict):
            value = dict(value)
            value.setdefault("name", self.default)
            name = value["name"]
            if not isinstance(name, str) or name not in self.registry:
                raise ValueError(self.registry.unknown_message(name, plugin_hint=True))
            return value
        raise ValueError(f"give a {self.registry.kind} name (e.g. {self.default}) or a mapping with a name, "
                         f"got {type(value).__name__}")

    def _tag(self, value: Any) -> Any:
        if isinstance(value, ComponentConfig):
            return value.name
        if isinstance(value, dict):
            return value.get("name")
        return value if isinstance(value, str) else None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        choices = {e.name: handler.generate_schema(e.config) for e in self.registry.entries()}
        union = core_schema.tagged_union_schema(choices, self._tag, custom_error_type="unknown_component",
                                                custom_error_message=f"unknown {self.registry.kind}")
        return core_schema.no_info_before_validator_function(self.normalize, union)


def component(registry: Registry, default: str) -> Any:
    """``Annotated[ComponentConfig, component(REGISTRY, "default")]``: a field naming a component."""
    return typing.Annotated[ComponentConfig, Component(registry, default)]


def component_of(field: FieldInfo) -> Component | None:
    """The Component marker of a config field, if it names a component."""
    return next((m for m in field.metadata if isinstance(m, Component)), None)



_BUILT: dict[type, tuple] = {}  # model -> the registries' versions its schema was built with


def current(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every component union below it rebuilt from the registries as they are now
    (a plugin registered since the last build joins its union); only stale models are rebuilt."""
    if _CHECKED.get(model) != VERSION[0]:  # nothing registered since the last check: nothing to do
        _walk(model, {}, rebuild=True)
        _CHECKED[model] = VERSION[0]
    return model


_CHECKED: dict[type, int] = {}  # root model -> VERSION when its tree was last checked


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in models_in(a)]


def _children(model: type[BaseModel]) -> list[tuple[Any, list[type[BaseModel]]]]:
    out = []
    for field in model.model_fields.values():
        marker = component_of(field)
        out.append((marker.registry if marker else None,
                    [e.config for e in marker.registry.entries()] if marker else models_in(field.annotation)))
    return out


def _walk(model: type[BaseModel], seen: dict, rebuild: bool) -> tuple:
    """``model``'s fingerprint: the versions of the registries of its component fields and, below
    them, its nested models' fingerprints. With ``rebuild``, each model (children first) whose
    fingerprint moved since its last build is rebuilt."""
    if model in seen:
        return seen[model]
    seen[model] = ()  # a cycle: counted once
    parts = []
    for registry, subs in _children(model):
        if registry is not None:
            parts.append((id(registry), registry.version))
        parts += [_walk(m, seen, rebuild) for m in subs]
    seen[model] = fp = tuple(parts)
    if rebuild and _BUILT.get(model) != fp:
        model.model_rebuild(force=True)
        _BUILT[model] = fp
    return fp


def _built_now(model: type[BaseModel]) -> None:
    """A config model just defined was built from the registries as they are: remember that."""
    _BUILT[model] = _walk(model, {}, rebuild=False)
