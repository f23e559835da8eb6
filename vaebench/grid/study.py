"""A study file expands into a flat list of run configs (as in disentanglement_lib's sweeps).

A study is a single-run config plus any of four top-level keys:

    grid:     {objective.k: [1, 2, 5]}                  values crossed (product)
    zip:      {optim.lr: [1e-3, 3e-4], train.steps: [..]} lists that vary together (or a list of such groups)
    variants: {log_sigma: {model.posterior: log_sigma}}  named partial configs (or an unnamed list)
    seeds:    3                                          or [0, 1, 2]

Runs = variants x grid x zip groups x seeds, each applied over the base in that order; a
``--set key=a,b,c`` on the command line adds (or replaces) a grid axis, a plain ``--set
key=value`` sets the key in every run. Runs that resolve to the same config are kept once, and
``Study.notes`` says which (the CLI prints it as one line).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import runs as runs_mod
from ..config import (STUDY_KEYS, RunConfig, apply_overrides, flatten, join_errors, key_info, known_keys,
                      load_imports, read_yaml, resolve,
                      split_override, suggest, yaml_value)
from ..errors import ConfigError


@dataclass(frozen=True)
class RunSpec:
    config: RunConfig
    varied: dict[str, Any] = field(default_factory=dict)  # axis -> this run's value, in axis order

    @property
    def hash(self) -> str:
        return self.config.run_hash()

    def folder(self, short: dict[str, str]) -> str:
        """``k=5,seed=1-3fa2c1d9e0``: the varied values for people, the hash for identity."""
        label = ",".join(f"{short[a]}={format_value(v)}" for a, v in self.varied.items())
        label = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", label)[:96]
        return f"{label}-{self.hash}" if label else self.hash


@dataclass(frozen=True)
class Study:
    name: str
    axes: list[str]
    runs: list[RunSpec]
    # The study's own base, before the grid: each varied config key's value there, and "variant" the
    # variant that changes nothing. A comparison's reference (vaebench.report.studies.references).
    base: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a user should hear about the expansion (merged runs)

    def short_names(self) -> dict[str, str]:
        """Each axis by its last dotted part, or in full where that part is ambiguous."""
        last = [a.rsplit(".", 1)[-1] for a in self.axes]
        return {a: (s if last.count(s) == 1 else a) for a, s in zip(self.axes, last)}

    def folders(self) -> list[str]:
        short = self.short_names()
        return [r.folder(short) for r in self.runs]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "axes": self.axes, "base": self.base,
                "runs": [{"folder": f, "id": r.hash, "varied": r.varied} for f, r in zip(self.folders(), self.runs)]}


def format_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(format_value(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def split_sweep(raw: str) -> list[str]:
    """``a,b,[1,2]`` -> ["a", "b", "[1,2]"]: commas inside brackets or quotes don't split."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [*parts, cur]


def parse_cli(overrides: list[str] | dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Split ``--set`` items into fixed values and new axes (``key=a,b,c``)."""
    if isinstance(overrides, dict):
        return dict(overrides), {}
    fixed: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    for item in overrides or []:
        key, raw = split_override(item)
        parts = split_sweep(raw)
        if len(parts) > 1:
            axes[key] = [yaml_value(p, f"--set {key}") for p in parts]
            fixed.pop(key, None)
        else:
            fixed[key] = yaml_value(raw, f"--set {key}")
            axes.pop(key, None)
    return fixed, axes


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or key not in known_keys():
        raise ConfigError(f"{where} names {key!r}, which is not a config key{suggest(str(key), known_keys())}")
    return key


def _named(key: str, value: Any) -> tuple[str, Any]:
    """``objective: iwae`` in a partial means objective.name=iwae, keeping the section's other keys."""
    return (f"{key}.name", value) if isinstance(value, str) and f"{key}.name" in known_keys() else (key, value)


def _axis_values(values: Any, where: str) -> list[Any]:
    if not isinstance(values, list):
        raise ConfigError(f"{where} must be a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"{where} has no values; give at least one or remove it")
    return values


def _grid(spec: Any, source: str) -> dict[str, list[Any]]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(f"'grid' in {source} must map config keys to lists, e.g. grid: {{objective.k: [1, 2]}}")
    return {_check_key(k, f"grid in {source}"): _axis_values(v, f"grid axis {k!r} in {source}")
            for k, v in spec.items()}


def _zip_groups(spec: Any, source: str) -> list[dict[str, list[Any]]]:
    if spec is None:
        return []
    groups = [spec] if isinstance(spec, dict) else spec
    if not isinstance(groups, list) or not all(isinstance(g, dict) and g for g in groups):
        raise ConfigError(f"'zip' in {source} must be a mapping of config keys to equal-length lists, "
                          f"or a list of such mappings")
    out = []
    for g in groups:
        group = {_check_key(k, f"zip in {source}"): _axis_values(v, f"zip key {k!r} in {source}")
                 for k, v in g.items()}
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ConfigError(f"zip group in {source} has lists of unequal length ({shown}); "
                              f"keys in one group vary together, so give them the same number of values")
        out.append(group)
    return out


def _flat_partial(partial: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """A partial config (nested or dotted) as dotted keys, each checked."""
    out: dict[str, Any] = {}
    for k, v in partial.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in known_keys() and key + "." + next(iter(v), "") in known_keys():
            out.update(_flat_partial(v, where, key + "."))
        else:
            out[_check_key(key, where)] = v
    return out


def _variants(spec: Any, source: str) -> list[tuple[str, dict[str, Any]]]:
    if spec is None:
        return []
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, list):
        items = [(None, v) for v in spec]
    else:
        raise ConfigError(f"'variants' in {source} must be a mapping of names to partial configs, or a list")
    if not items:
        raise ConfigError(f"'variants' in {source} is empty; give at least one or remove it")
    out = []
    for name, partial in items:
        if partial is None:
            partial = {}
        if not isinstance(partial, dict):
            raise ConfigError(f"variant {name or partial!r} in {source} must be a mapping of config keys")
        flat = _flat_partial(partial, f"variant {name!r} in {source}" if name else f"a variant in {source}")
        label = str(name) if name is not None else (
            ",".join(f"{k}={format_value(v)}" for k, v in flat.items()) or "base")
        out.append((label, flat))
    return out


# A study is a list of runs someone will train; past this it is a typo (seeds: 1e9), not a plan.
MAX_RUNS = 10_000


def _seeds(spec: Any, source: str) -> list[int] | None:
    if spec is None:
        return None
    if isinstance(spec, bool) or not isinstance(spec, (int, list)):
        raise ConfigError(f"'seeds' in {source} must be a count (seeds: 3) or a list (seeds: [0, 1, 2])")
    if isinstance(spec, int) and spec > MAX_RUNS:
        raise ConfigError(f"'seeds' in {source} asks for {spec:,} runs; a study may have at most {MAX_RUNS:,}")
    seeds = list(range(spec)) if isinstance(spec, int) else spec
    if not seeds:
        raise ConfigError(f"'seeds' in {source} is empty; give a count >= 1 or a non-empty list")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"'seeds' in {source} must be non-negative integers, got {spec!r}")
    return seeds


def expand(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None, source: str = "",
           base: str | Path | None = None, imports: list[str] | tuple[str, ...] = ()) -> Study:
    """A study dict (plus ``--set`` items) as a flat list of resolved runs; a ConfigError if invalid.
    ``base``: the study file's folder (its plugins' paths are relative to it); ``imports``: more
    plugins (``--import``), relative to the current directory."""
    source = source or "the config"
    raw = dict(raw or {})
    spec = {k: raw.pop(k, None) for k in STUDY_KEYS}
    fixed, cli_axes = parse_cli(overrides)
    given = {k: source for k in STUDY_KEYS}  # where each study key came from, to blame the right one
    for key in STUDY_KEYS:  # --set seeds=5, --set variants=null: the study's own keys
        if key in fixed:
            spec[key] = fixed.pop(key)
            given[key] = f"--set {key}={format_value(spec[key])}"
    load_imports(raw, base, imports, source)  # a --set key or value may be a plugin's
    unknown = [k for k in [*fixed, *cli_axes] if k not in known_keys()]
    if unknown:  # every mistyped --set key at once
        raise ConfigError(join_errors([(k, f"--set names {k!r}, which is not a config key"
                                           f"{suggest(str(k), known_keys())}") for k in unknown]))
    for key, values in [*((k, [v]) for k, v in fixed.items()), *cli_axes.items()]:
        if key_info(key).owner:  # a key of one component only: checked with the base that selects it
            continue
        for value in values:  # a bad value is the override's fault, not the file's: say so
            resolve({}, dict([_named(key, value)]), source=f"--set {key}={format_value(value)}")
    grid = {k: v for k, v in _grid(spec["grid"], given["grid"]).items() if k not in fixed}
    grid.update({k: _axis_values(v, f"--set {k}") for k, v in cli_axes.items()})
    zips = [{k: v for k, v in g.items() if k not in fixed and k not in cli_axes}
            for g in _zip_groups(spec["zip"], given["zip"])]
    zips = [g for g in zips if g]
    variants = _variants(spec["variants"], given["variants"])
    seeds = _seeds(spec["seeds"], given["seeds"])
    if "seed" in fixed and seeds is not None:
        seeds = None
    if "seed" in grid and seeds is not None:
        raise ConfigError(f"{source} sets both 'seeds' and a 'seed' axis; keep one")

    axes = (["variant"] if variants else []) + list(grid) + [k for g in zips for k in g] + \
        (["seed"] if seeds is not None else [])
    if len(set(axes)) != len(axes):
        dup = next(a for a in axes if axes.count(a) > 1)
        raise ConfigError(f"{dup!r} is varied twice in {source} (grid, zip or --set); vary each key in one place")

    choices: list[list[tuple[dict[str, Any], dict[str, Any]]]] = []  # per factor: (varied, overrides)
    if variants:
        choices.append([({"variant": name}, flat) for name, flat in variants])
    for k, values in grid.items():
        choices.append([({k: v}, {k: v}) for v in values])
    for g in zips:
        n = len(next(iter(g.values())))
        choices.append([({k: g[k][i] for k in g}, {k: g[k][i] for k in g}) for i in range(n)])
    if seeds is not None:
        choices.append([({"seed": s}, {"seed": s}) for s in seeds])

    total = 1
    for c in choices:
        total *= len(c)
    if total > MAX_RUNS:
        raise ConfigError(f"{source} expands to {total:,} runs; a study may have at most {MAX_RUNS:,} "
                          f"(vary fewer keys or fewer values)")
    runs: list[RunSpec] = []
    seen: dict[str, list[dict[str, Any]]] = {}  # run id -> the varied values of every combo that gives it
    for combo in itertools.product(*choices):
        varied: dict[str, Any] = {}
        sets: dict[str, Any] = {}
        for v, o in combo:
            varied.update(v)
            sets.update(o)
        sets.update(fixed)
        sets = dict(_named(k, v) for k, v in sets.items())
        where = source + (" (run " + ", ".join(f"{k}={format_value(v)}" for k, v in varied.items()) + ")"
                          if varied else "")
        cfg = resolve(apply_overrides(raw, sets), source=where, base=base, imports=imports)
        if cfg.run_hash() not in seen:
            seen[cfg.run_hash()] = []
            runs.append(RunSpec(cfg, varied))
        seen[cfg.run_hash()].append(varied)
    name = runs[0].config.name
    if any(r.config.name != name for r in runs):
        raise ConfigError(f"runs of one study must share a 'name' ({source} varies it); vary something else")
    if name == runs_mod.REPORT_FOLDER:
        raise ConfigError(f"a study may not be named {name!r} in {source}: RESULTS/{name} is where "
                          f"`vaebench report` writes; choose another name")
    merged = _merged(list(seen.values()), total, fixed)
    return Study(name, axes, runs, _base(raw, fixed, variants, runs, source, base, imports) if axes else {},
                 [merged] if merged else [])


def _merged(groups: list[list[dict[str, Any]]], total: int, cli_fixed: dict[str, Any]) -> str:
    """One line naming the runs that resolved to the same config (kept once), or "" if none did:
    e.g. a ``--set objective.k=3`` that makes variants k1, k5 and baseline one run."""
    said: list[str] = []
    for group in (g for g in groups if len(g) > 1):
        differ = [k for k in group[0] if len({format_value(v.get(k)) for v in group}) > 1]
        if differ == ["variant"]:
            names = [str(v["variant"]) for v in group]
            what = "variants " + ", ".join(names[:-1]) + " and " + names[-1]
        else:
            labels = [",".join(f"{k}={format_value(v.get(k))}" for k in differ) for v in group]
            what = "runs " + ", ".join(labels[:-1]) + " and " + labels[-1]
        if what not in said:
            said.append(what)
    if not said:
        return ""
    after = (" after --set " + " ".join(f"{k}={format_value(v)}" for k, v in cli_fixed.items())) if cli_fixed else ""
    return (f"{'; '.join(said)} are the same run{after}: kept once, "
            f"{len(groups)} runs instead of {total}")


def _base(raw: dict[str, Any], fixed: dict[str, Any], variants: list[tuple[str, dict[str, Any]]],
          runs: list[RunSpec], source: str, folder: str | Path | None, imports) -> dict[str, Any]:
    """The value the study's own config (before grid, zip and variants) gives each key its runs vary,
    and the variant that changes nothing: what the study is compared against. A base that does not
    resolve alone (a variant supplies what it lacks) has none."""
    try:
        cfg = resolve(apply_overrides(raw, dict(_named(k, v) for k, v in fixed.items())), source=source,
                      base=folder, imports=imports)
    except ConfigError:
        return {}
    flats = [flatten(r.config.to_dict()) for r in runs]
    own = flatten(cfg.to_dict())
    varied = [k for k in dict.fromkeys(k for f in flats for k in f)
              if k != "seed" and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    out = {k: yaml_safe(own.get(k)) for k in varied}
    empty = [name for name, flat in variants if not flat]
    if empty:
        out["variant"] = empty[0]
    return out


def yaml_safe(v: Any) -> Any:
    """A flattened config value as grid.yaml can hold it (flatten writes lists as JSON text)."""
    if isinstance(v, str) and v[:1] == "[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def load_study(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
               imports: list[str] | tuple[str, ...] = ()) -> Study:
    return expand(read_yaml(path), overrides, source=str(path), base=Path(path).parent, imports=imports)


def is_study(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> bool:
    return any(raw.get(k) is not None for k in STUDY_KEYS) or bool(parse_cli(overrides)[1])
