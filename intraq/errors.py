"""Errors a user can act on: the CLI prints their message without a traceback."""


class UserInputError(Exception):
    """Bad input from the user (unknown name, missing path, corrupt file); the message names the fix."""
