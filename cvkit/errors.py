"""The two exceptions the CLI turns into one line: usage errors exit 2, runtime errors exit 1."""
from __future__ import annotations


class CvkitError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1


class UsageError(CvkitError):
    """The command line or a preset asked for something that does not exist (exit code 2)."""

    exit_code = 2
