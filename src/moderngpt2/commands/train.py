"""Placeholder while the command moves here: forwards to the module that still parses it."""

from ..training.train import main  # noqa: F401
