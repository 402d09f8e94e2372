"""The exceptions and exit statuses that every command of tuning shares."""

from __future__ import annotations

EXIT_OK = 0
"""The command did what it was asked (a search: its target is met)."""
EXIT_USAGE = 2
"""Bad input, or a condition the user must fix (a full disk): one line says which."""
EXIT_TRIALS_FAILING = 3
"""A worker stopped because its trials kept failing (see their fail_reason)."""
EXIT_DATABASE_LOST = 4
"""The database stayed unreachable past TUNING_DB_RETRY_S: nothing to fix in the command, run
it again once the database is back (a scheduler may simply retry it)."""
# 1 is a crash (Python's own status for an uncaught exception): the launcher restarts the worker.
# Stopped by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).

MESSAGE_CHARS = 1000
"""The longest error line any command prints."""


def counted(count: int, noun: str) -> str:
    """"1 epoch", "3 epochs": a count and its noun, as every message says one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def shorten(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters: a message echoes what it was given, never megabytes."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str) -> str:
    """`text` kept to its line and field: a backslash, tab or line break in a path or a
    class's name, escaped as \\\\, \\t, \\n and \\r, would otherwise add fields or lines."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def described(exc: BaseException, limit: int = 200) -> str:
    """An exception in one line: its type and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return shorten(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, limit)


class UsageError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with status 2
    (`exit_status`).

    Raised before anything is stored, so that a rejected command changes nothing.
    """

    exit_status = EXIT_USAGE


class ServerUnreachable(UsageError):
    """The database server did not answer when the command opened its storage (the command
    did not wait for it): it may be down or restarting, or the URL wrong. One line as for bad
    input, but the status that says "run me again" (4), which a script or scheduler can tell
    from a usage error."""

    exit_status = EXIT_DATABASE_LOST


class StudyNotFound(UsageError):
    """The study is not in the storage: no database file, a database without Optuna's tables,
    no study of that name, or one tuning.search did not make. A command that creates studies
    takes it as "new"; any other error opening the storage is one to report."""
