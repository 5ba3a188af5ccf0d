"""`validate_per_layer_args` of the earlier per-layer-embedding tool, so its README's check runs from here.

ModernGPT2 validates these settings in `ModernGPT2Config` (and `moderngpt2 train` before it builds anything);
this function hands them to it.
"""

from moderngpt2 import ModernGPT2Config

PER_LAYER_SETTINGS = ("per_layer_vocab_size", "per_layer_hidden_size", "per_layer_combination_method",
                      "per_layer_gate_activation", "per_layer_projection_dropout")


def validate_per_layer_args(args):
    """The tiny per-layer config these settings make; a ValueError names the first setting that is wrong."""
    settings = {name: getattr(args, name) for name in PER_LAYER_SETTINGS if getattr(args, name, None) is not None}
    return ModernGPT2Config(model_size_name="tiny", use_per_layer_embedding=True, **settings)
