"""The one exception type that means "the user asked for something we cannot do"."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with status 2.

    Raised before anything is stored, so that a rejected command changes nothing.
    """
