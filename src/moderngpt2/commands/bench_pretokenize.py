"""Placeholder while the command moves here: forwards to the module that still parses it."""

from ..bench.pretokenize import main  # noqa: F401
