"""Shared pieces of the Hydra entry points: where conf/ is, and one-line user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue

from ddpm_lab.errors import UserError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def find_user_error(exc: BaseException) -> BaseException | None:
    """The UserError (or missing mandatory config value) behind `exc`, following its causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (UserError, MissingMandatoryValue, FileNotFoundError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def user_errors(prog: str) -> Callable:
    """Decorate a task function: a user error prints `prog: error: ...` and exits with status 2."""
    def wrap(fn: Callable) -> Callable:
        @wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is the user's mistake
                err = find_user_error(exc)
                if err is None:
                    raise
                msg = str(err).splitlines()[0] if isinstance(err, MissingMandatoryValue) else str(err)
                print(f"{prog}: error: {msg}", file=sys.stderr)
                sys.exit(2)
        return inner
    return wrap


def check_group_choice(argv: list[str], group: str, prog: str) -> None:
    """A `group=name` override that names no conf/<group>/<name>.yaml ends the program with one
    line listing the choices and exit status 2 (Hydra's own message spans a dozen lines)."""
    from ddpm_lab.errors import choice_error

    choices = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != group or "(" in value:       # sweeps such as choice(...) pass
            continue
        for name in value.split(","):
            if name not in choices:
                print(f"{prog}: error: {choice_error(group, name, choices)}", file=sys.stderr)
                sys.exit(2)
