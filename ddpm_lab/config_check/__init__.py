"""Every config value checked before anything runs.

`check_config(cfg, app)` raises a UserError naming the first key whose value is not allowed,
e.g. `optim.lr='abc' must be a positive number`. The rules live in one place, as tables:
- rules.py   the building blocks (integer, number, Choice, ListOf, Section, Group, ...)
- groups.py  each config group's keys, per `_target_` (data, net, schedule, ..., trainer, callbacks)
- apps.py    each app's top-level keys, and the rules that tie two keys together
The Hydra callback `ConfigCheck` (registered in conf/hydra/default.yaml) runs the check before
Hydra makes the run folder; the entry points' `run(cfg)` call `check_config` first, so
in-process runs get the same error.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from ddpm_lab.config_check.apps import APPS, PROGS, RELATIONS
from ddpm_lab.config_check.rules import MISSING, UNRESOLVED, check_value

__all__ = ["APPS", "PROGS", "check_config", "check_values", "plain"]


def plain(node: Any, skip: tuple = ()) -> Any:
    """`node` as plain dicts and lists with its interpolations resolved; a `???` value becomes
    MISSING and a value that cannot be resolved yet (e.g. `${hydra:runtime.output_dir}` before
    Hydra sets it) UNRESOLVED. Top-level keys in `skip` are left out."""
    if isinstance(node, DictConfig):
        if node._is_none():
            return None
        out = {}
        for key in node.keys():
            if key in skip:
                continue
            child = node._get_node(key)
            if child is not None and not child._is_interpolation() and child._is_missing():
                out[key] = MISSING
                continue
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - unresolvable now: the run reports it if it matters
                out[key] = UNRESOLVED
                continue
            out[key] = plain(value)
        return out
    if isinstance(node, ListConfig):
        if node._is_none():
            return None
        out = []
        for i in range(len(node)):
            try:
                out.append(plain(node[i]))
            except Exception:  # noqa: BLE001
                out.append(MISSING if node._get_node(i)._is_missing() else UNRESOLVED)
        return out
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items() if k not in skip}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    return node


def check_values(values: dict, app: str) -> None:
    """check_config on an already plain config (see `plain`)."""
    if app not in APPS:
        raise ValueError(f"no config rules for app {app!r}; known: {', '.join(APPS)}")
    check_value(APPS[app], "", values)
    relations = RELATIONS.get(app)
    if relations is not None:
        relations(values)


def check_config(cfg: DictConfig | dict, app: str = "train") -> None:
    """Raise a UserError naming the first key of `cfg` whose value is not allowed in `app`'s
    config ("train", "sample", "eval", "forward", "train_reference"); its `hydra` node is skipped."""
    check_values(plain(cfg, skip=("hydra",)), app)
