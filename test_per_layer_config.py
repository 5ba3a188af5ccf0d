"""`get_tiny_config` of the earlier per-layer-embedding tool, so its README's check runs from here.

ModernGPT2's equivalent: `ModernGPT2Config(model_size_name="tiny", use_per_layer_embedding=True)`, or
`moderngpt2 info --model_size_name tiny --use-per-layer-embedding` on the command line.
"""

from moderngpt2 import ModernGPT2Config


def get_tiny_config(**overrides) -> ModernGPT2Config:
    """The tiny preset with per-layer embeddings (a 1000-entry per-layer vocabulary of width 64)."""
    settings = dict(model_size_name="tiny", use_per_layer_embedding=True, per_layer_vocab_size=1000,
                    per_layer_hidden_size=64)
    return ModernGPT2Config(**{**settings, **overrides})
