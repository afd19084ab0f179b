"""Errors a user can cause, said in one sentence at the CLI boundary."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite; the message names the fix."""

    exit_code = 2
