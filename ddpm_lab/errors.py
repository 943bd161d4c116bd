"""The one exception type for mistakes a user can make (bad config value, missing file, ...).

Entry points catch it, print its message on one line and exit with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A user-caused error whose message names the key or file and what is allowed."""


def choice_error(key: str, value: object, choices: Iterable[object], reason: str = "") -> UserError:
    """`key=value` is not one of `choices` (`reason`: why, when the choices alone do not say)."""
    allowed = ", ".join(str(c) for c in choices)
    why = f" ({reason})" if reason else ""
    return UserError(f"{key}={value!r} is not allowed{why}; choose one of: {allowed}")
