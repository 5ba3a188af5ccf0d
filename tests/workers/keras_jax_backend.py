"""Runs the Keras model of `moderngpt2.tf` on Keras' JAX backend (a backend is fixed per process).

Usage: python keras_jax_backend.py CHECKPOINT_DIR PROMPTS.npy OUTPUT.npz — writes the logits of the prompts and
their greedy continuation, for the calling test to compare with PyTorch.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import numpy as np  # noqa: E402

import keras  # noqa: E402
from moderngpt2.tf import ModernGPT2ForCausalLM  # noqa: E402

if __name__ == "__main__":
    checkpoint, prompts_path, output = sys.argv[1:4]
    assert keras.backend.backend() == "jax", keras.backend.backend()
    model = ModernGPT2ForCausalLM.from_pretrained(checkpoint)
    prompts = np.load(prompts_path)
    logits = keras.ops.convert_to_numpy(model(prompts.astype(np.int32)))
    np.savez(output, logits=logits, generated=model.generate(prompts, max_new_tokens=int(sys.argv[4])))
