"""User-facing errors: anything the user can fix by changing their input.

The CLI turns these into one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix (study file, data path, image). Exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """A study file that does not validate. The message names the file and the field."""


class DataError(UserError):
    """A data source that cannot be read. The message names the path or file."""
