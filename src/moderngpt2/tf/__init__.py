"""ModernGPT2 in Keras 3 on TensorFlow: the same checkpoints, logits and tokens as the PyTorch model.

Keras' own default backend is TensorFlow, which the `tf.function` generation and `tf.data` input are made for.
A backend the user chose (KERAS_BACKEND, or `backend` in keras.json) is left alone: the layers use `keras.ops`
only and run there too (generation then runs its decode step uncompiled).
"""

from .modeling_moderngpt2 import ModernGPT2ForCausalLM, ModernGPT2Model

__all__ = ["ModernGPT2ForCausalLM", "ModernGPT2Model"]
