"""Placeholder while the command moves here: forwards to the module that still parses it."""

from ..shipped_configs import main  # noqa: F401
