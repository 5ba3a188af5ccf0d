"""Placeholder while the command moves here: forwards to the module that still parses it."""

from ..convert import main  # noqa: F401
