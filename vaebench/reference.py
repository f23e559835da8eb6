"""The config reference, written from the schema: every key's default, description and facts as its
field states them (vaebench.config.key_infos), plugins' keys included once they are imported.

The docs site's reference page is this text (scripts/gen_docs.py), so it cannot drift from the code.
"""

from __future__ import annotations

import json
from typing import Any

from .config import KeyInfo, key_infos

HEADER = """# Config reference

Every key a run config accepts, with its default, its description and its facts, generated from the
schema (`vaebench config --reference` prints this page; with `--import PLUGIN` it lists the plugin's
keys too). A config file needs only what differs from the defaults; `vaebench config CONFIG` prints
one resolved.

- **run id**: *yes* when the key changes a run's numbers, so it is part of the run's id and folder
  name; *no* for keys of execution only (logging, threads, evaluation), which a rerun may change and
  still resume the same run.
- **per run**: *yes* when the runs of one stack (trained together) may differ in it.
- A key whose section names a component belongs to that component only (*only with ...*); setting
  the section's `name` switches the keys, as a config group does.
"""


def _value(v: Any) -> str:
    """A default as YAML's flow style would write it (JSON is valid YAML); ``null`` for None."""
    if isinstance(v, tuple):
        v = list(v)
    try:
        text = json.dumps(v, ensure_ascii=False)
    except TypeError:
        text = str(v)
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _choices(info: KeyInfo) -> str:
    """The names a key may take, for a key that names a component (a section's are on its ``name``)."""
    if info.registry is None or info.section:
        return ""
    return "one of " + ", ".join(f"`{n}`" + (f" ({m})" if (m := _module(info.registry, n)) else "")
                                 for n in info.registry.names())


def _module(registry, name: str) -> str:
    """The module that registered ``name``, when it is not vaebench's own (a plugin's)."""
    module = getattr(registry.get(name), "__module__", "") or ""
    return "" if module.split(".")[0] in ("vaebench", "torch") else module


def reference_markdown() -> str:
    """The reference page: one table per top-level section, keys in the schema's order."""
    infos = key_infos()
    groups: dict[str, list[KeyInfo]] = {}
    for i in infos:
        top = i.key.split(".")[0]
        groups.setdefault(top, []).append(i)
    out = [HEADER]
    top_level = [i for i in infos if "." not in i.key and not i.section]
    if top_level:
        out += ["## Top-level keys", "", *_table(top_level), ""]
    for top, members in groups.items():
        head = members[0]
        if not head.section:
            continue
        d = _cell(head.description)
        out += [f"## `{top}`", "", d[:1].upper() + d[1:] + ".", "",
                *_table([m for m in members if not m.section or m.key != top]), ""]
    return "\n".join(out).rstrip() + "\n"


def _table(infos: list[KeyInfo]) -> list[str]:
    rows = ["| key | default | description | run id | per run |", "|---|---|---|---|---|"]
    for i in infos:
        what = _owned(i, _cell(i.description))
        choices = _choices(i)
        if choices:
            what += f"; {choices}"
        if i.section:
            what = f"*section*: {what}"
        rows.append(f"| `{i.key}` | {_value(i.default)} | {what} | {'yes' if i.changes_numbers else 'no'} "
                    f"| {'yes' if i.per_run else 'no'} |")
    return rows


def _owned(info: KeyInfo, what: str) -> str:
    """A component's key, with the components that have it: several alternatives may each have a key
    of this name (softplus's and a plugin's SiLU's ``beta``), each with its own description."""
    parent, _, field = info.key.rpartition(".")
    reg = next((o.registry for o in key_infos() if o.key == parent and o.registry is not None), None)
    if reg is None or field == "name" or info.section:
        return what
    kind = reg.kind
    owners = [n for n in reg.names() if field in reg.config(n).model_fields]
    defaults = {repr(reg.config(n).model_fields[field].get_default(call_default_factory=True)) for n in owners}
    if len(owners) == len(reg.names()) and len(defaults) == 1:
        return what  # every alternative's key, with one default
    if len(owners) == 1:
        module = _module(reg, owners[0])
        return f"{what} (only with {kind} {owners[0]}{f', from {module}' if module else ''})"
    parts = []
    for n in owners:
        f = reg.config(n).model_fields[field]
        module = _module(reg, n)
        parts.append(f"with {kind} `{n}`{f' ({module})' if module else ''}: {_cell(f.description or field)}, "
                     f"default {_value(f.get_default(call_default_factory=True))}")
    return "; ".join(parts)


def _plugin_of(info: KeyInfo) -> str:
    """``info.owner`` is "<kind> <name>": the plugin module registering that name, if not vaebench."""
    kind, _, name = info.owner.rpartition(" ")
    for other in key_infos():
        reg = other.registry
        if reg is not None and reg.kind == kind and name in reg.names():
            return _module(reg, name)
    return ""
