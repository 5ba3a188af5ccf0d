"""The Hugging Face `Trainer`, changed only where pretraining needs it.

- `create_optimizer`: AdamW groups from `optim.build_parameter_groups` (decay on matrices only, a per-layer
  learning-rate scale); the optimizer class and its betas/eps still come from `TrainingArguments`.
- `_get_train_sampler`: a per-epoch permutation that is a pure function of (seed, epoch), so a resumed run
  sees exactly the order an uninterrupted one would.
- `training_step`: a NaN or infinite loss or gradient stops training before the optimizer touches the weights.
- `log`: adds tokens/s and MFU to the training logs and perplexity to the evaluation logs.
- `_save`: keeps saved checkpoints loadable whatever engine trained them (see `engines.complete_state_dict`
  and `engines.restore_model_code`).
"""

import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from transformers import Trainer

from ..engines import complete_state_dict, local_tensor, restore_model_code
from ..metrics import perplexity
from .optim import build_parameter_groups


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when any rank's loss or gradients are NaN or infinite."""


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of the dataset per epoch, derived only from the seed and the epoch number."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()


class PretrainingTrainer(Trainer):
    def __init__(self, *args, per_layer_learning_rate_scale: float = 1.0, throughput=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_layer_learning_rate_scale = per_layer_learning_rate_scale
        self.throughput = throughput

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = build_parameter_groups(
                opt_model,
                learning_rate=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                per_layer_learning_rate_scale=self.per_layer_learning_rate_scale,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochShuffleSampler(len(dataset), seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.stop_on_nonfinite_loss:
            self._stop_if_nonfinite(loss, model)
        return loss

    def _stop_if_nonfinite(self, loss, model):
        """Raise before the optimizer step if the loss, or (on the step's last micro-batch) a gradient, is not finite.

        A finite loss can still back-propagate infinities; one such update would poison the weights. Every rank
        takes part in the same reduction before anyone raises, so no rank is left waiting in a collective.
        """
        bad = ~torch.isfinite(loss.detach().float())
        if self.accelerator.sync_gradients:
            grads = [local_tensor(p.grad) for p in model.parameters() if p.grad is not None]
            if grads:
                bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads).to(bad.device))
        bad = bad.to(torch.float32).reshape(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            bad = bad.to(self.args.device)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"the training loss or its gradients are not finite (NaN or inf) at step {self.state.global_step + 1}"
            )

    def _save(self, output_dir=None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if state_dict:
            state_dict = complete_state_dict(model, state_dict)
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            restore_model_code(model, output_dir if output_dir is not None else self.args.output_dir)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self.throughput is not None:
            logs.update(self.throughput.pop_window())
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
        super().log(logs, *args, **kwargs)
