"""Training ModernGPT2 in JAX: the loss, AdamW as `moderngpt2 train` sets it up, and a data-parallel step.

    model = ModernGPT2ForCausalLM(config)                 # or .from_pretrained(DIR)
    trainer = Trainer(model, adamw(total_steps=1000))     # mesh=data_parallel_mesh() to shard the batch
    for input_ids in batches:
        loss = trainer.step(input_ids)
    trainer.write_back(model).save_pretrained(DIR)

The optimizer matches `moderngpt2 train`: AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.01 on the
matrices of linear maps only (never norms, embeddings or the `gated` mixing logits), gradients clipped to global
norm 1.0, and a cosine schedule after a 5% linear warmup.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .modeling_moderngpt2 import upcast

IGNORE_INDEX = -100
PER_LAYER_NAME_PARTS = ("embed_tokens_per_layer", "per_layer_projection", "per_layer_gate")


def causal_lm_loss(model, input_ids, labels=None, attention_mask=None):
    """Mean cross-entropy of position t predicting labels[t + 1] over the final-softcapped float32 logits.

    labels default to input_ids; -100 marks positions that are not predicted, as in the PyTorch model.
    """
    labels = input_ids if labels is None else labels
    logits, _ = model(input_ids, attention_mask)
    log_probs = jax.nn.log_softmax(upcast(logits[:, :-1]), axis=-1)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _names(path):
    """A pytree path of an NNX state -> its module/parameter names (the Variable's own `.value` step left out)."""
    return [str(part.key) if hasattr(part, "key") else str(getattr(part, "idx", "")) for part in path
            if hasattr(part, "key") or hasattr(part, "idx")]


def decay_mask(params):
    """True on the parameters weight decay applies to: linear kernels and `concat`'s per-layer matrices."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf.ndim >= 2 and _names(path)[-1] not in ("embedding", "gate_logits"), params)


def per_layer_mask(params):
    """True on the per-layer embedding machinery (the table, the projection and every layer's gate)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(name in PER_LAYER_NAME_PARTS for name in _names(path)), params)


def adamw(learning_rate=2.5e-4, total_steps=None, warmup=0.05, weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8,
          max_grad_norm=1.0, per_layer_learning_rate_scale=1.0):
    """AdamW with `moderngpt2 train`'s defaults and decay groups; a cosine schedule when total_steps is given.

    warmup: a step count (>= 1) or a fraction of total_steps (< 1), as `--warmup_steps`.
    """
    schedule = learning_rate
    if total_steps is not None:
        warmup_steps = int(warmup if warmup >= 1 else round(warmup * total_steps))
        schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1), total_steps, 0.0)
    parts = [optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)]
    if max_grad_norm:
        parts.insert(0, optax.clip_by_global_norm(max_grad_norm))
    if per_layer_learning_rate_scale != 1.0:
        parts.append(optax.masked(optax.scale(per_layer_learning_rate_scale), per_layer_mask))
    return optax.chain(*parts)


def data_parallel_mesh(devices=None):
    """A one-axis `Mesh` named "data" over the given (default: all) devices: the batch is split along it."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


class Trainer:
    """Functional training of an NNX model: parameters and optimizer state live here between jitted steps.

    With a mesh, parameters and optimizer state are replicated over its devices and every batch is split along
    its "data" axis; XLA inserts the gradient all-reduce. The batch size must divide by the number of devices.
    """

    def __init__(self, model, optimizer, mesh=None):
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        # A copy: each step donates (reuses) the buffers of the parameters it updates, and the model keeps its own.
        self.params = jax.tree_util.tree_map(jnp.array, params)
        self.optimizer = optimizer
        self.mesh = mesh
        if mesh is not None:
            replicated = NamedSharding(mesh, PartitionSpec())
            self.params, self.rest = jax.device_put((self.params, self.rest), replicated)
        self.opt_state = optimizer.init(self.params)
        self._step = jax.jit(self._train_step, donate_argnums=(0, 1))

    def loss_and_grads(self, params, input_ids, labels=None, attention_mask=None):
        """jax.value_and_grad of `causal_lm_loss` with respect to the parameters."""

        def loss_fn(trainable):
            return causal_lm_loss(nnx.merge(self.graphdef, trainable, self.rest), input_ids, labels, attention_mask)

        return jax.value_and_grad(loss_fn)(params)

    def _train_step(self, params, opt_state, input_ids, labels, attention_mask):
        loss, grads = self.loss_and_grads(params, input_ids, labels, attention_mask)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def shard_batch(self, array):
        array = jnp.asarray(np.asarray(array), jnp.int32)
        if self.mesh is None:
            return array
        return jax.device_put(array, NamedSharding(self.mesh, PartitionSpec("data")))

    def step(self, input_ids, labels=None, attention_mask=None):
        """One optimizer step on a batch (B, S); returns the loss before the update as a float."""
        batch = [None if a is None else self.shard_batch(a) for a in (input_ids, labels, attention_mask)]
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, *batch)
        return float(loss)

    def write_back(self, model):
        """Copy the trained parameters into `model` (for generate or save_pretrained) and return it."""
        nnx.update(model, jax.tree_util.tree_map(jnp.array, self.params))  # copies: later steps donate ours
        return model
