"""Runs the Keras model of `moderngpt2.tf` on Keras' JAX backend (a backend is fixed per process).

Usage: python keras_jax_backend.py CHECKPOINT_DIR PROMPTS.npy OUTPUT.npz NEW_TOKENS — writes the logits of the
prompts and their greedy continuation, for the calling test to compare with PyTorch, and the losses of `fit`
epochs on the prompts (Keras' JAX trainer).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import numpy as np  # noqa: E402

import keras  # noqa: E402
from moderngpt2.tf import ModernGPT2ForCausalLM  # noqa: E402
from moderngpt2.tf.training import adamw, causal_lm_loss  # noqa: E402

if __name__ == "__main__":
    checkpoint, prompts_path, output = sys.argv[1:4]
    assert keras.backend.backend() == "jax", keras.backend.backend()
    model = ModernGPT2ForCausalLM.from_pretrained(checkpoint)
    prompts = np.load(prompts_path)
    logits = keras.ops.convert_to_numpy(model(prompts.astype(np.int32)))
    generated = model.generate(prompts, max_new_tokens=int(sys.argv[4]))
    model.compile(optimizer=adamw(model, learning_rate=1e-2), loss=causal_lm_loss)
    history = model.fit(prompts.astype(np.int32), prompts.astype(np.int32), batch_size=len(prompts), epochs=5,
                        verbose=0)
    np.savez(output, logits=logits, generated=generated, fit_losses=np.array(history.history["loss"]))
