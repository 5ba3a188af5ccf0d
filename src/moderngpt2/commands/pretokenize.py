"""Placeholder while the command moves here: forwards to the module that still parses it."""

from ..data.pretokenize import main  # noqa: F401
