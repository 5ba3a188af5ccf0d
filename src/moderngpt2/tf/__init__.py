"""ModernGPT2 in Keras 3 on TensorFlow: the same checkpoints, logits and tokens as the PyTorch model.

Keras reads its backend once, at its first import: unless the user chose one (KERAS_BACKEND, or Keras already
imported), this package picks TensorFlow, which the `tf.function` generation and `tf.data` input are made for.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from .modeling_moderngpt2 import ModernGPT2ForCausalLM, ModernGPT2Model  # noqa: E402

__all__ = ["ModernGPT2ForCausalLM", "ModernGPT2Model"]
