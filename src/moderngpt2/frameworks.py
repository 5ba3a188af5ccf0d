"""The model in other frameworks behind one interface, for the commands' `--framework` flag.

`moderngpt2.jax` and `moderngpt2.tf` each export a `ModernGPT2ForCausalLM` with
`from_pretrained(path)`, `save_pretrained(path)`, `config` (a dict), `generate(input_ids, attention_mask=None, *,
max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos_token_id, pad_token_id)` returning int64
`(B, S + max_new_tokens)`, and `token_nll(input_ids, attention_mask=None)` returning float32 `(B, S - 1)`.
`torch` is the transformers model itself, loaded by the commands' own code.
"""

import importlib
from dataclasses import dataclass

from .arguments import arg
from .errors import UserError, first_line
from .loading import require_saved_model

FRAMEWORKS = ("torch", "jax", "tf")
# The top-level packages each framework's extra installs.
EXTRA_PACKAGES = {"jax": ("jax", "jaxlib", "flax", "optax"), "tf": ("tensorflow", "keras", "tf_keras")}


@dataclass
class FrameworkArguments:
    """The `--framework` of the commands that run a checkpoint."""

    _argument_group_name = "framework"

    framework: str = arg("torch", "implementation to run: torch, jax or tf (needs the extra of the same name)",
                         choices=FRAMEWORKS)


def import_framework(framework: str):
    """`moderngpt2.<framework>`, or a UserError naming the extra to install when its packages are missing."""
    if framework not in FRAMEWORKS or framework == "torch":
        raise UserError(f"--framework {framework}: choose one of {', '.join(f for f in FRAMEWORKS if f != 'torch')}")
    try:
        return importlib.import_module(f"moderngpt2.{framework}")
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] in EXTRA_PACKAGES[framework]:
            raise UserError(
                f"--framework {framework} needs the {framework} extra: pip install 'moderngpt2[{framework}]'"
            ) from error
        raise


def load_causal_lm(framework: str, path: str):
    """`ModernGPT2ForCausalLM.from_pretrained(path)` of `moderngpt2.<framework>` (jax or tf)."""
    module = import_framework(framework)
    require_saved_model(path)
    try:
        return module.ModernGPT2ForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot load the model: {first_line(error)}") from error


def check_torch_only_flags(framework: str, device: str, dtype: str) -> None:
    """--device and --dtype pick PyTorch's device and weights dtype; the other frameworks run their own default."""
    if device not in ("auto", "cpu"):
        raise UserError(f"--device {device}: only with --framework torch; {framework} uses its own default")
    if dtype not in ("auto", "float32"):
        raise UserError(f"--dtype {dtype}: only with --framework torch; {framework} keeps the checkpoint's")
