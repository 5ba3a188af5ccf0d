"""ModernGPT2 in JAX (Flax NNX): `pip install 'moderngpt2[jax]'`.

    from moderngpt2.jax import ModernGPT2ForCausalLM
    model = ModernGPT2ForCausalLM.from_pretrained("out/final")
    tokens = model.generate(input_ids, max_new_tokens=32)
"""

from .modeling_moderngpt2 import ModernGPT2ForCausalLM, ModernGPT2Model

__all__ = ["ModernGPT2ForCausalLM", "ModernGPT2Model"]
