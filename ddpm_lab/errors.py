"""The one exception type for mistakes a user can make (bad config value, missing file, ...).

Entry points catch it, print its message on one line and exit with status 2.
"""


class UserError(ValueError):
    """A user-caused error whose message names the key or file and what is allowed."""


def choice_error(key: str, value: object, choices) -> UserError:
    """`key=value` is not one of `choices`."""
    allowed = ", ".join(str(c) for c in choices)
    return UserError(f"{key}={value!r} is not allowed; choose one of: {allowed}")
