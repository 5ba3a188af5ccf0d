"""Positions of left-padded batches, shared by the Keras model and its generation loop."""

from keras import ops


def positions_from_mask(attention_mask):
    """Position ids of a left-padded batch: each row counts its own tokens from 0, padding gets 0 (as
    transformers' generate does)."""
    positions = ops.cumsum(ops.cast(attention_mask, "int32"), axis=-1) - 1
    return ops.where(ops.cast(attention_mask, "bool"), positions, 0)
