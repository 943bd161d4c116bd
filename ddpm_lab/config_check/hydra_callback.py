"""The Hydra callback that checks an app's config before Hydra makes any folder.

Hydra calls `on_run_start` (single run) and `on_multirun_start` (sweep) before the run or sweep
folder exists (hydra/_internal/hydra.py; run_job in hydra/core/utils.py makes the job folder), and
`on_job_start` once per job after its folder is made. A bad value prints `<prog>: error: <message>`
and exits with status 2 (SystemExit passes through Hydra's callback wrapper, which only turns
Exceptions into warnings). In a sweep, the swept values of plain keys (`seed=0,1`, an Optuna
`interval(...)`'s ends) are checked up front too; each job's full config is checked as it starts.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.config_check import APPS, PROGS, check_values, plain
from ddpm_lab.errors import UserError


def app_of(config: DictConfig) -> str | None:
    """The config's name (train, sample, ...): which table checks it."""
    return OmegaConf.select(config, "hydra.job.config_name", default=None)


def fail(app: str | None, err: UserError) -> None:
    prog = PROGS.get(app or "") or Path(sys.argv[0]).name
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(2)


def swept_values(config: DictConfig) -> list[tuple[str, Any]]:
    """(key, value) for each value a sweep gives a plain (non-group, non-hydra) key: the command
    line's `key=a,b` / `range(...)` and the sweeper's search space (an interval: both ends)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    lines = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines += [f"{k}={v}" for k, v in params.items()]
    out = []
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.key_or_group
        if (not override.is_sweep_override() or override.is_delete() or key in groups
                or key.startswith("hydra.") or "@" in key):
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            values = [value.start, value.end]
        else:
            values = list(override.sweep_iterator())
        out += [(key, v) for v in values]
    return out


def with_value(values: dict, key: str, value: Any) -> dict:
    """A copy of the plain config `values` with the dotted `key` set to `value`."""
    out = copy.deepcopy(values)
    node = out
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value
    return out


class ConfigCheck(Callback):
    """Check the composed config of a ddpm_lab app before anything runs (see the module doc)."""

    def check(self, config: DictConfig, sweep: bool = False) -> None:
        app = app_of(config)
        if app not in APPS:
            return
        try:
            values = plain(config, skip=("hydra",))
            check_values(values, app)
            if sweep:
                for key, value in swept_values(config):
                    check_values(with_value(values, key, value), app)
        except UserError as err:
            fail(app, err)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config, sweep=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode", default=None) == RunMode.MULTIRUN:
            self.check(config)
