"""``moderngpt2 bench generate``: greedy generation tokens/s of our model against transformers' Gemma2.

Both models get the same shapes, the same random prompts and the same number of new tokens, at each batch
size (1 and 16 by default), with weights in bf16. Our model runs with the default dynamic cache and, as
``ours-static``, with a static cache whose decode step transformers compiles on CUDA; Gemma2 runs the same
two ways. One untimed call (compilation included) precedes the timed ones; tokens/s is batch × new tokens
over the median time of a ``generate`` call, prefill included.

``--framework jax`` (or ``tf``) instead runs our PyTorch model against ``moderngpt2.jax`` (``moderngpt2.tf``)
loaded from the same saved checkpoint (jitted or ``tf.function``-traced, fixed-size KV cache) on the same
prompts, and prints the JAX/PyTorch (TF/PyTorch) ratio.
"""

import statistics
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..arguments import arg
from ..devices import DTYPES
from ..errors import UserError
from .common import (
    DeviceTimer,
    attention_backend,
    build_model,
    environment,
    format_table,
    measure_models,
    parse_int_list,
    parse_model_list,
    peak_memory_gib,
    ratio,
    release_memory,
    resolve_model_bench,
    run_isolated,
)

FRAMEWORKS = ("jax", "tf")  # the other implementations, each also the name of its model here
MODELS = ("ours", "ours-static", "ours-ple", "gemma2", "gemma2-static", *FRAMEWORKS)
OURS = ("ours", "ours-static", "ours-ple")


@dataclass
class GenerateBenchArguments:
    """The generation every model runs, which models, and which implementations."""

    _argument_group_name = "generation benchmark"

    batch: str = arg("1,16", "batch sizes, comma-separated")
    prompt_len: int = arg(128, "prompt tokens")
    new_tokens: int = arg(128, "tokens to generate")
    repeats: int = arg(3, "timed generate calls per batch size")
    models: str | None = arg(None, f"comma-separated subset of {', '.join(MODELS)} (default: all but ours-ple on "
                                   "CUDA, ours,gemma2 on the CPU; --use_per_layer_embedding adds ours-ple)")
    gemma2_attn: str = arg("eager", "Gemma2's attention backend (eager: transformers' choice for Gemma2)",
                           choices=("eager", "flex_attention"))
    framework: str = arg("torch", "jax or tf: compare moderngpt2.jax or moderngpt2.tf with our PyTorch model on one "
                                  "checkpoint", choices=("torch", *FRAMEWORKS))

    def __post_init__(self):
        for flag in ("prompt_len", "new_tokens", "repeats"):
            if getattr(self, flag) <= 0:
                raise UserError(f"--{flag} must be a positive integer, got {getattr(self, flag)}")


def resolve_settings(*groups) -> SimpleNamespace:
    """The parsed groups (GenerateBenchArguments and the shared ones) as the settings of one run on this machine."""
    settings = resolve_model_bench(groups)
    settings.batch = parse_int_list(settings.batch, "--batch")
    default_models = "ours,ours-static,gemma2,gemma2-static" if settings.device.type == "cuda" else "ours,gemma2"
    if settings.framework != "torch":
        default_models = f"ours,{settings.framework}"
    if settings.framework == "tf" and settings.dtype != "float32":
        raise UserError(f"--dtype {settings.dtype}: the TensorFlow model computes in float32; pass --dtype float32 "
                        "so both models run in the same dtype")
    settings.models = parse_model_list(settings.models or default_models, MODELS)
    if settings.per_layer and "ours-ple" not in settings.models:
        settings.models.append("ours-ple")
    return settings


def measure_generation(model: torch.nn.Module, settings: SimpleNamespace, batch: int, static: bool) -> dict:
    """Median seconds of one greedy ``generate`` call that produces exactly ``settings.new_tokens`` per sequence."""
    options = dict(
        max_new_tokens=settings.new_tokens, do_sample=False,
        # No end-of-sequence token: every call generates exactly new_tokens, so all models do the same work.
        eos_token_id=None, pad_token_id=0,
        cache_implementation="static" if static else None,
        # transformers compiles the decode step itself when the cache is static and the device is a GPU.
        disable_compile=not (static and settings.compile),
    )

    def generate(prompt):
        prompt = prompt.to(settings.device)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), **options)

    return time_generation(generate, model.config.vocab_size, settings, batch)


def time_generation(generate, vocab_size: int, settings: SimpleNamespace, batch: int) -> dict:
    """Time `generate(prompt)` on random prompts (the same for every model): one untimed call, then the median."""
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    prompt = torch.randint(0, vocab_size, (batch, settings.prompt_len), generator=generator)
    seconds = []
    with DeviceTimer(settings.device) as warmup:
        generate(prompt)
    for _ in range(settings.repeats):
        with DeviceTimer(settings.device) as timed:
            output = generate(prompt)
        seconds.append(timed.seconds)
    generated = output.shape[1] - settings.prompt_len
    if generated != settings.new_tokens:
        raise RuntimeError(f"generate produced {generated} new tokens instead of {settings.new_tokens}")
    median = statistics.median(seconds)
    return {
        "tokens_per_s": batch * settings.new_tokens / median,
        "ms_per_token": median / settings.new_tokens * 1000,
        "seconds": median,
        "warmup_s": warmup.seconds,
        "peak_memory_gib": peak_memory_gib(settings.device),
    }


def framework_attention(framework: str) -> str:
    """What runs the attention of `framework`'s model: XLA on JAX's backend; Keras ops on Keras' backend."""
    if framework == "jax":
        import jax

        return f"xla-{jax.default_backend()}"
    import keras

    return f"keras-{keras.backend.backend()}"


def match_tensorflow_threads() -> int:
    """Size TensorFlow's CPU thread pool like torch's, so both models run on the same cores; the size in use (0:
    TensorFlow's default, all cores, when it had already started in this process and its pools are fixed)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(torch.get_num_threads())
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    return tf.config.threading.get_intra_op_parallelism_threads()


def bench_framework(framework: str, configs, settings: SimpleNamespace) -> dict:
    """moderngpt2.<framework> loaded from a checkpoint of our model (same config, seed and dtype as `ours`)."""
    from ..frameworks import load_causal_lm

    threads = {"threads": match_tensorflow_threads()} if framework == "tf" else {}
    torch.manual_seed(settings.seed)
    with tempfile.TemporaryDirectory() as checkpoint:
        build_model(configs.ours, None, torch.device("cpu")).to(DTYPES[settings.dtype]).save_pretrained(checkpoint)
        model = load_causal_lm(framework, checkpoint)
    described = {"implementation": f"moderngpt2.{framework}", "attn_implementation": framework_attention(framework),
                 "cache": "static", "compiled": True, **threads}

    def generate(prompt):
        return model.generate(prompt.numpy(), max_new_tokens=settings.new_tokens, pad_token_id=0)

    return {str(batch): {**described, **time_generation(generate, model.config["vocab_size"], settings, batch)}
            for batch in settings.batch}


def bench_model(name: str, configs, settings: SimpleNamespace) -> dict:
    """Build one model once and measure it at every batch size; its results keyed by batch size."""
    if name in FRAMEWORKS:
        return bench_framework(name, configs, settings)
    if name.startswith("ours"):
        config = configs.ours_per_layer if name == "ours-ple" else configs.ours
        model = build_model(config, settings.ours_attn, settings.device)
    else:
        model = build_model(configs.gemma2, settings.gemma2_attn, settings.device)
    model.to(DTYPES[settings.dtype]).eval()
    static = name.endswith("-static")
    described = {"implementation": type(model).__name__,
                 "attn_implementation": attention_backend(model, settings.device),
                 "cache": "static" if static else "dynamic",
                 "compiled": static and settings.compile and settings.device.type == "cuda"}
    results = {}
    for batch in settings.batch:
        release_memory(settings.device)
        results[str(batch)] = {**described, **measure_generation(model, settings, batch, static)}
    return results


def run_one(name: str, configs, settings: SimpleNamespace) -> dict:
    """One model's results by batch size; a failure is recorded for every batch size."""
    result = run_isolated(lambda: bench_model(name, configs, settings), settings.device)
    return {str(batch): result for batch in settings.batch} if "error" in result else result


def ratios(by_batch: dict) -> dict:
    """Every measured 'ours variant / Gemma2 variant' pair of tokens/s, per batch size."""
    table = {}
    for batch, results in by_batch.items():
        speeds = {name: result["tokens_per_s"] for name, result in results.items() if "tokens_per_s" in result}
        table[batch] = {f"{ours}/{theirs}": ratio(speeds[ours], speeds[theirs])
                        for ours in speeds if ours in OURS for theirs in speeds if theirs not in (*OURS, *FRAMEWORKS)}
        for framework in FRAMEWORKS:
            if framework in speeds and "ours" in speeds:
                table[batch][f"{framework}/ours"] = ratio(speeds[framework], speeds["ours"])
    return table


def format_report(report: dict) -> str:
    """The table and the ratios, as printed after a run."""
    settings = report["settings"]
    lines = [f"\nbench generate on {report['environment']['device']}: size {settings['size']}, prompt "
             f"{settings['prompt_len']}, {settings['new_tokens']} new tokens, greedy, {settings['dtype']} weights, "
             f"median of {settings['repeats']}\n"]
    rows, notes = [], []
    for batch, results in report["results"].items():
        for name, result in results.items():
            if "tokens_per_s" in result:
                rows.append([batch, name, result["attn_implementation"], result["cache"],
                             "yes" if result["compiled"] else "no", result["tokens_per_s"], result["ms_per_token"],
                             result["peak_memory_gib"], result["warmup_s"]])
            else:
                rows.append([batch, name, "failed"] + [None] * 6)
                notes.append(f"{name} at batch {batch} failed: {result['error']}")
    lines.append(format_table(["batch", "model", "attention", "cache", "compiled", "tokens/s", "ms/token",
                               "peak GiB", "warmup s"], rows))
    lines.append("\n".join(notes))
    for batch, pairs in report["ratios"].items():
        if pairs:
            lines.append(f"batch {batch}: " + ", ".join(f"{pair} {value:.2f}x" for pair, value in pairs.items()))
    return "\n".join(lines)


def run_benchmark(settings: SimpleNamespace) -> dict:
    """Measure every model in turn; the report (rewritten to --output_json after each model) of all of them."""
    return measure_models(settings, settings.prompt_len + settings.new_tokens, run_one, build_report,
                          desc="bench generate")


def failed(report: dict) -> bool:
    return any("error" in result for results in report["results"].values() for result in results.values())


def build_report(per_model: dict, configs, settings: SimpleNamespace) -> dict:
    """Environment, settings, and the results and ratios by batch size of the models measured so far."""
    by_batch = {str(batch): {name: result[str(batch)] for name, result in per_model.items()}
                for batch in settings.batch}
    return {
        "benchmark": "generate",
        "environment": environment(settings.device),
        "settings": {
            "size": settings.model_size_name, "batch": settings.batch, "prompt_len": settings.prompt_len,
            "new_tokens": settings.new_tokens, "repeats": settings.repeats, "dtype": settings.dtype,
            "compile": settings.compile, "vocab_size": configs.ours.vocab_size,
            "attn_softcap": configs.ours.attn_logit_softcapping,
            "final_softcap": configs.ours.final_logit_softcapping,
            "ours_attn": settings.ours_attn, "gemma2_attn": settings.gemma2_attn, "models": settings.models,
        },
        "results": by_batch,
        "ratios": ratios(by_batch),
    }
