"""One error family for everything a user can see.

Each error's message says what to do next. `exit_code` is what the CLI returns: 2 for the user's own mistakes
(bad input that no retry will fix), 1 for work that was attempted and failed.
"""


class BotError(Exception):
    """Base of every user-facing error."""

    exit_code = 1


class UsageError(BotError):
    """Bad input: a missing path, an unknown feature, an unreadable config, an unsupported architecture."""

    exit_code = 2


class UnsafeCheckpointError(UsageError):
    """The checkpoint would need code execution or pickle loading, which the user has not allowed."""


class ExportError(BotError):
    """An export or its validation failed."""
