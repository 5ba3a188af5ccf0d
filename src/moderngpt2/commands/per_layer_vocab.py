"""Placeholder while the command moves here: forwards to the module that still parses it."""

from ..data.per_layer_vocab import main  # noqa: F401
