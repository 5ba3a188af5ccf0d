"""What the benchmarks share: their arguments, the shapes (our preset mirrored into transformers' Gemma2 and
Llama), device timing, peak memory, the environment record and the printed table.

The comparison is only fair when every model has the same shapes, so the transformers configs are derived
from our ``ModernGPT2Config`` preset instead of being written out a second time.
"""

import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arguments import ModelShapeArguments, PerLayerShapeArguments, arg, build_config, config_settings
from ..devices import DTYPES, pick_device, pick_dtype
from ..errors import UserError, first_line
from ..fileio import make_directory, write_json

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

# Where the benchmarks differ from ModernGPT2Config's defaults: the `small` preset, Gemma2's softcaps and bf16.
BENCH_DEFAULTS = {"model_size_name": "small", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                  "dtype": "bfloat16"}
ATTENTION_BACKENDS = ("auto", "eager", "sdpa", "flex_attention")


# ----------------------------------------------------------------------------------------------- arguments


@dataclass
class ModelBenchArguments:
    """What the model benchmarks (train, generate) take besides the shape, the device and the output."""

    _argument_group_name = "run"

    no_softcap: bool = arg(False, "turn both softcaps off (a softcap of 0 turns one off)")
    ours_attn: str = arg("auto", "attention backend of our model (auto: the model's own choice)",
                         choices=ATTENTION_BACKENDS)
    compile: bool | None = arg(None, "torch.compile the models (default: on for CUDA, off for the CPU)",
                               nargs="?", const=True)
    no_compile: bool = arg(False, "never torch.compile the models")
    seed: int = arg(0, "seed of the weights and the inputs")


@dataclass
class JsonOutputArguments:
    """Where a benchmark also writes its results; checked before any measuring starts."""

    _argument_group_name = "output"

    output_json: str | None = arg(None, "also write the results to this JSON file", aliases=("--json",),
                                  metavar="OUT")

    def __post_init__(self):
        if self.output_json:
            make_directory(os.path.dirname(os.path.abspath(self.output_json)), "--output_json")


def resolve_model_bench(groups) -> SimpleNamespace:
    """One flat view of a model benchmark's parsed groups (their field names are distinct), with the
    machine-dependent choices made: the device, the dtype's long name, compile on CUDA unless told, and the
    config settings of our model (`settings.model`; a softcap of 0 is none)."""
    settings = SimpleNamespace(**{name: value for group in groups for name, value in vars(group).items()})
    settings.device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, settings.device)
    settings.dtype = next(name for name, value in DTYPES.items() if value == dtype)
    settings.compile = False if settings.no_compile else (
        settings.device.type == "cuda" if settings.compile is None else settings.compile)
    model = config_settings(*(group for group in groups
                              if isinstance(group, (ModelShapeArguments, PerLayerShapeArguments))))
    settings.per_layer = model.pop("use_per_layer_embedding", False)
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if settings.no_softcap or not model.get(name):
            model[name] = None
    settings.model = model
    return settings


def parse_int_list(text: str, flag: str) -> list[int]:
    """'1,16' -> [1, 16]; a one-line error for anything that is not a list of positive integers."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise UserError(f"{flag} takes positive integers separated by commas (e.g. 1,16), got '{text}'")
    return values


def parse_model_list(text: str, known: tuple[str, ...], flag: str = "--models") -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserError(f"{flag}: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(known)}")
    return names


# ----------------------------------------------------------------------------------------------- shapes


@dataclass
class BenchConfigs:
    """The same shapes, four ways: ours, ours with per-layer embeddings, transformers' Gemma2 and Llama."""

    ours: "PreTrainedConfig"
    ours_per_layer: "PreTrainedConfig"
    gemma2: "PreTrainedConfig"
    llama: "PreTrainedConfig"


def build_configs(settings: SimpleNamespace, max_positions: int) -> BenchConfigs:
    """The configs of every model at the same shapes (ours from the user's settings, the others mirrored from
    it), for sequences of up to `max_positions` tokens; an impossible shape is the user's error."""
    from transformers import Gemma2Config, LlamaConfig

    common = {**settings.model, "n_positions": max_positions, "use_cache": True}
    ours = build_config(**common)
    ours_per_layer = build_config(**common, use_per_layer_embedding=True)
    attn_cap, final_cap = ours.attn_logit_softcapping, ours.final_logit_softcapping
    special = dict(bos_token_id=ours.bos_token_id, eos_token_id=ours.eos_token_id, pad_token_id=ours.pad_token_id)
    shared = dict(
        vocab_size=ours.vocab_size, hidden_size=ours.hidden_size, intermediate_size=ours.intermediate_size,
        num_hidden_layers=ours.num_hidden_layers, num_attention_heads=ours.num_attention_heads,
        num_key_value_heads=ours.num_key_value_heads, head_dim=ours.head_dim, max_position_embeddings=max_positions,
        rms_norm_eps=ours.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": ours.rope_theta},
        tie_word_embeddings=True, attention_dropout=0.0, **special)
    gemma2 = Gemma2Config(
        hidden_activation=ours.activation_function, query_pre_attn_scalar=ours.query_pre_attn_scalar,
        attn_logit_softcapping=attn_cap, final_logit_softcapping=final_cap, layer_types=ours.layer_types,
        # transformers' Gemma2 builds its sliding mask even when no layer uses it: keep its default window then.
        **({"sliding_window": ours.sliding_window} if ours.sliding_window else {}), **shared)
    # Llama has neither softcaps nor sandwich norms: it is the speed a plain sdpa decoder of these shapes reaches.
    llama = LlamaConfig(hidden_act=ours.activation_function, **shared)
    return BenchConfigs(ours=ours, ours_per_layer=ours_per_layer, gemma2=gemma2, llama=llama)


def build_model(config, attn_implementation: str | None, device: torch.device) -> nn.Module:
    """A freshly initialised fp32 model on ``device`` (random weights: speed does not depend on them)."""
    from transformers import AutoModelForCausalLM

    from .. import ModernGPT2ForCausalLM

    kwargs = {} if attn_implementation in (None, "auto") else {"attn_implementation": attn_implementation}
    if config.model_type != "moderngpt2":
        return AutoModelForCausalLM.from_config(config, **kwargs).to(device)
    try:
        model = ModernGPT2ForCausalLM._from_config(config, **kwargs)
    except ValueError as error:  # an attention backend that cannot honour the settings (e.g. sdpa with a softcap)
        raise UserError(f"--ours-attn {attn_implementation}: {error}") from error
    return model.to(device)


def attention_backend(model: nn.Module, device: torch.device) -> str:
    """The attention backend a forward on ``device`` runs (ours re-picks its automatic choice per device)."""
    from .. import ModernGPT2PreTrainedModel

    if isinstance(model, ModernGPT2PreTrainedModel):
        return model.attention_backend(device)
    return str(model.config._attn_implementation)


# ----------------------------------------------------------------------------------------------- device


class DeviceTimer:
    """Seconds of device work inside a ``with`` block.

    On CUDA the block is bracketed by events and the end event is waited for, so queued kernels are counted;
    on the CPU work is synchronous and ``perf_counter`` is enough.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start_time = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.start_time
        return False


def measure_models(settings: SimpleNamespace, max_positions: int, run_one, build_report, desc: str) -> dict:
    """`run_one(name, configs, settings)` for each of `settings.models` in turn, at the same shapes, with a
    progress bar; the report `build_report(results, configs, settings)`. Each result is printed as it comes and
    the report rewritten to --output_json, so a run stopped by a time limit still leaves the models it finished."""
    torch.manual_seed(settings.seed)
    configs = build_configs(settings, max_positions)
    results = {}
    progress = tqdm(settings.models, desc=desc, unit="model", file=sys.stderr)
    for name in progress:
        progress.set_postfix_str(name)
        results[name] = run_one(name, configs, settings)
        progress.write(f"{desc}: {name}: {json.dumps(results[name])}", file=sys.stderr)
        if settings.output_json:
            write_json(settings.output_json, build_report(results, configs, settings))
    return build_report(results, configs, settings)


def run_isolated(bench, device: torch.device) -> dict:
    """`bench()` with fresh memory and compiler state. A failure (out of memory, a compiler error) comes back as
    `{"error": ...}`, so one model failing does not lose the other models' numbers."""
    release_memory(device)
    reset_compiler()
    try:
        return bench()
    except UserError:
        raise
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as error:  # noqa: BLE001 - see the docstring
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(error).__name__}: {first_line(error)}"}
    finally:
        release_memory(device)


def release_memory(device: torch.device) -> None:
    """Return what the previous model held and restart the peak counter, so each model's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset; the CPU has no per-model counter, so None there."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def autocast(device: torch.device, dtype_name: str):
    """Mixed precision in `dtype_name` over fp32 weights (nothing to do in float32)."""
    dtype = DTYPES[dtype_name]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def graph_break_count() -> int:
    """Graph breaks torch.compile has reported since the counters were last cleared."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def reset_compiler() -> None:
    """Forget compiled code and counters, so one model's graphs neither help nor hinder the next."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


# ----------------------------------------------------------------------------------------------- reporting


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model_name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                              model_name)
    except OSError:
        pass
    return f"CPU {model_name} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    import transformers

    from .. import __version__

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "moderngpt2": __version__,
        "python": platform.python_version(),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def format_number(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[format_number(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


