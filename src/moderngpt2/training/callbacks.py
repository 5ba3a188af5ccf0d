"""Trainer callbacks: throughput and MFU, per-layer statistics, and a record of the optimizer that really runs."""

import os
import time

import torch
from transformers import TrainerCallback

from ..engines import full_tensor, is_zero_partitioned, logical_numel
from ..fileio import write_json
from .optim import parameter_group_names


class ThroughputCallback(TrainerCallback):
    """Measures tokens/s (and MFU given a peak) over the training steps since the last log line.

    Only time inside steps counts: time spent logging, evaluating or saving is excluded. The trainer pulls
    the window's numbers with `pop_window()` when it logs the training loss.
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops_all_devices: float | None):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops_all_devices = peak_flops_all_devices
        self._mark = None
        self._seconds = 0.0
        self._steps = 0

    def _restart_clock(self, *args, **kwargs):
        self._mark = time.perf_counter()

    on_train_begin = on_log = on_evaluate = on_save = _restart_clock

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._seconds += now - (self._mark if self._mark is not None else now)
        self._steps += 1
        self._mark = now

    def pop_window(self) -> dict:
        if self._steps == 0 or self._seconds <= 0:
            return {}
        tokens_per_second = self.tokens_per_step * self._steps / self._seconds
        metrics = {"tokens_per_second": tokens_per_second}
        if self.peak_flops_all_devices:
            metrics["mfu"] = tokens_per_second * self.flops_per_token / self.peak_flops_all_devices
        self._seconds, self._steps = 0.0, 0
        return metrics


class PerLayerStatsCallback(TrainerCallback):
    """Every `interval` steps, logs `per_layer/...` scalars of the per-layer embedding machinery.

    Statistics (with `log_stats`): each layer's mean per-token norm in the per-layer table, the mean `gated`
    mixing weight sigmoid(g) (the share of the projected main embedding), and each gate's contribution
    ||gate output|| / ||hidden|| measured by forward hooks during that step. Gradients (with `log_gradients`):
    per-layer norms of the table slice, the projection rows and the gate, read after clipping, before the
    update. FSDP2 and tensor-parallel shards are gathered first; DeepSpeed ZeRO keeps weights (stage 3) and
    gradients (stages 1-3) in its own partitions, so those statistics are left out there.
    """

    def __init__(self, model, interval: int, log_stats: bool, log_gradients: bool):
        self.base = model.model
        self.num_layers = model.config.num_hidden_layers
        self.interval = max(1, interval)
        self.log_stats = log_stats
        self.log_gradients = log_gradients
        self.log = None  # set to the trainer's `log` once the trainer exists
        self._capturing = False
        self._pending = {}
        if log_stats:
            for i, layer in enumerate(self.base.layers):
                layer.per_layer_gate.register_forward_hook(self._gate_hook(i))

    def _due(self, step: int) -> bool:
        return step % self.interval == 0

    def _gate_hook(self, layer_index):
        def hook(module, inputs, output):
            if self._capturing and module.training:
                with torch.no_grad():
                    hidden = inputs[0].float()
                    ratio = (output.float() - hidden).norm() / hidden.norm().clamp(min=1e-12)
                self._pending[f"per_layer/gate_contribution/layer_{layer_index}"] = ratio.item()
        return hook

    def on_step_begin(self, args, state, control, **kwargs):
        self._capturing = self.log_stats and self._due(state.global_step + 1)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.log_gradients and self._due(state.global_step + 1):
            self._pending.update(self._gradient_norms())

    def on_step_end(self, args, state, control, **kwargs):
        self._capturing = False
        if not self._due(state.global_step):
            return
        if self.log_stats:
            self._pending.update(self._weight_statistics())
        if self._pending and self.log is not None:
            # Logging resets `should_log`; keep the Trainer's own decision to log the loss at this step.
            should_log = control.should_log
            self.log(self._pending)
            control.should_log = should_log
        self._pending = {}

    @torch.no_grad()
    def _weight_statistics(self) -> dict:
        table = self.base.embed_tokens_per_layer.weight
        if is_zero_partitioned(table):
            return {}  # ZeRO-3 keeps only a flat shard of the table on each rank
        stats = {}
        rows = full_tensor(table).float().view(table.shape[0], self.num_layers, -1)  # (V_p, L, d)
        for i, value in enumerate(rows.norm(dim=-1).mean(dim=0).tolist()):
            stats[f"per_layer/embedding_norm/layer_{i}"] = value
        mixing = self.base.per_layer_projection.mixing_weights()
        if mixing is not None:
            for i, value in enumerate(full_tensor(mixing).float().mean(dim=-1).tolist()):
                stats[f"per_layer/gated_weight/layer_{i}"] = value
        return stats

    @torch.no_grad()
    def _gradient_norms(self) -> dict:
        norms = {}
        table = self.base.embed_tokens_per_layer.weight
        if table.grad is not None and table.grad.shape == table.shape:
            grad = full_tensor(table.grad).float().view(table.shape[0], self.num_layers, -1)  # (V_p, L, d)
            for i, value in enumerate(grad.pow(2).sum(dim=(0, 2)).sqrt().tolist()):
                norms[f"per_layer/embedding_grad_norm/layer_{i}"] = value
        proj = self.base.per_layer_projection.proj.weight
        if proj.grad is not None and proj.grad.shape == proj.shape:
            grad = full_tensor(proj.grad).float().view(self.num_layers, -1, proj.shape[1])  # (L, d, H)
            for i, value in enumerate(grad.pow(2).sum(dim=(1, 2)).sqrt().tolist()):
                norms[f"per_layer/projection_grad_norm/layer_{i}"] = value
        for i, layer in enumerate(self.base.layers):
            grads = [full_tensor(p.grad).float() for p in layer.per_layer_gate.parameters() if p.grad is not None]
            if grads:
                norms[f"per_layer/gate_grad_norm/layer_{i}"] = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
        return norms


def unwrap_optimizer_chain(optimizer) -> list:
    """The optimizer and the ones it wraps (accelerate -> DeepSpeed ZeRO -> torch AdamW), outermost first."""
    chain = [optimizer]
    while getattr(chain[-1], "optimizer", None) is not None and chain[-1].optimizer is not chain[-1]:
        chain.append(chain[-1].optimizer)
    return chain


def describe_optimizer(optimizer, model=None) -> dict:
    """What steps the weights: the wrapper chain and, per group of the innermost optimizer, its settings.

    With `model`, each group also lists the names and total size of the parameters it was built from.
    """
    chain = unwrap_optimizer_chain(optimizer)
    members = parameter_group_names(model) if model is not None else {}
    params = dict(model.named_parameters()) if model is not None else {}
    groups = []
    for group in chain[-1].param_groups:
        names = members.get(group.get("name"), [])
        groups.append({
            "name": group.get("name"),
            "lr": group.get("initial_lr", group.get("lr")),
            "betas": list(group["betas"]) if "betas" in group else None,
            "eps": group.get("eps"),
            "weight_decay": group.get("weight_decay"),
            "numel": sum(logical_numel(params[n]) for n in names),
            "parameters": names,
        })
    return {"optimizer_chain": [f"{type(o).__module__}.{type(o).__name__}" for o in chain], "param_groups": groups}


class OptimizerRecordCallback(TrainerCallback):
    """Writes OUTPUT/optimizer.json at the start of training: proof of the betas, eps and decay groups in use."""

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        if optimizer is None or not state.is_world_process_zero:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        write_json(os.path.join(args.output_dir, "optimizer.json"), describe_optimizer(optimizer, model))
