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

import argparse
import statistics
import tempfile

import torch

from ..argparsing import CommandParser
from ..errors import UserError
from .common import (
    DTYPES,
    DeviceTimer,
    add_common_arguments,
    attention_backend,
    build_configs,
    build_model,
    environment,
    format_table,
    parse_int_list,
    parse_model_list,
    peak_memory_gib,
    ratio,
    release_memory,
    run_isolated,
    run_models,
    resolve_run_settings,
    write_json,
)

FRAMEWORKS = ("jax", "tf")  # the other implementations, each also the name of its model here
MODELS = ("ours", "ours-static", "ours-ple", "gemma2", "gemma2-static", *FRAMEWORKS)
OURS = ("ours", "ours-static", "ours-ple")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="moderngpt2 bench generate",
        description="Greedy generation tokens/s of ModernGPT2 against transformers' Gemma2 at identical shapes.")
    parser.add_argument("--batch", default="1,16", help="batch sizes, comma-separated (default: 1,16)")
    parser.add_argument("--prompt-len", "--prompt_len", type=int, default=128, help="prompt tokens (default: 128)")
    parser.add_argument("--new-tokens", "--new_tokens", type=int, default=128, help="tokens to generate (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls per batch size (default: 3)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of {', '.join(MODELS)} (default: all but ours-ple on CUDA, "
                             "ours,gemma2 on the CPU; --per-layer adds ours-ple)")
    parser.add_argument("--gemma2-attn", "--gemma2_attn", choices=("eager", "flex_attention"), default="eager",
                        help="Gemma2's attention backend (default: eager, transformers' choice for Gemma2)")
    parser.add_argument("--framework", choices=("torch", *FRAMEWORKS), default="torch",
                        help="jax or tf: compare moderngpt2.jax or moderngpt2.tf with our PyTorch model on one "
                             "checkpoint (default: torch)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    resolve_run_settings(args)
    args.batch = parse_int_list(args.batch, "--batch")
    for flag in ("prompt_len", "new_tokens", "repeats"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    default_models = "ours,ours-static,gemma2,gemma2-static" if args.device.type == "cuda" else "ours,gemma2"
    if args.framework != "torch":
        default_models = f"ours,{args.framework}"
    if args.framework == "tf" and args.dtype != "fp32":
        raise UserError(f"--dtype {args.dtype}: the TensorFlow model computes in float32; pass --dtype fp32 so both "
                        "models run in the same dtype")
    args.models = parse_model_list(args.models or default_models, MODELS)
    if args.per_layer and "ours-ple" not in args.models:
        args.models.append("ours-ple")
    return args


def measure_generation(model: torch.nn.Module, args: argparse.Namespace, batch: int, static: bool) -> dict:
    """Median seconds of one greedy ``generate`` call that produces exactly ``args.new_tokens`` per sequence."""
    settings = dict(
        max_new_tokens=args.new_tokens, do_sample=False,
        # No end-of-sequence token: every call generates exactly new_tokens, so all models do the same work.
        eos_token_id=None, pad_token_id=0,
        cache_implementation="static" if static else None,
        # transformers compiles the decode step itself when the cache is static and the device is a GPU.
        disable_compile=not (static and args.compile),
    )

    def generate(prompt):
        prompt = prompt.to(args.device)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)

    return time_generation(generate, model.config.vocab_size, args, batch)


def time_generation(generate, vocab_size: int, args: argparse.Namespace, batch: int) -> dict:
    """Time `generate(prompt)` on random prompts (the same for every model): one untimed call, then the median."""
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    prompt = torch.randint(0, vocab_size, (batch, args.prompt_len), generator=generator)
    seconds = []
    with DeviceTimer(args.device) as warmup:
        generate(prompt)
    for _ in range(args.repeats):
        with DeviceTimer(args.device) as timed:
            output = generate(prompt)
        seconds.append(timed.seconds)
    generated = output.shape[1] - args.prompt_len
    if generated != args.new_tokens:
        raise RuntimeError(f"generate produced {generated} new tokens instead of {args.new_tokens}")
    median = statistics.median(seconds)
    return {
        "tokens_per_s": batch * args.new_tokens / median,
        "ms_per_token": median / args.new_tokens * 1000,
        "seconds": median,
        "warmup_s": warmup.seconds,
        "peak_memory_gib": peak_memory_gib(args.device),
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


def bench_framework(framework: str, configs, args: argparse.Namespace) -> dict:
    """moderngpt2.<framework> loaded from a checkpoint of our model (same config, seed and dtype as `ours`)."""
    from ..frameworks import load_causal_lm

    threads = {"threads": match_tensorflow_threads()} if framework == "tf" else {}
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as checkpoint:
        build_model(configs.ours, None, torch.device("cpu")).to(DTYPES[args.dtype]).save_pretrained(checkpoint)
        model = load_causal_lm(framework, checkpoint)
    described = {"implementation": f"moderngpt2.{framework}", "attn_implementation": framework_attention(framework),
                 "cache": "static", "compiled": True, **threads}

    def generate(prompt):
        return model.generate(prompt.numpy(), max_new_tokens=args.new_tokens, pad_token_id=0)

    return {str(batch): {**described, **time_generation(generate, model.config["vocab_size"], args, batch)}
            for batch in args.batch}


def bench_model(name: str, configs, args: argparse.Namespace) -> dict:
    """Build one model once and measure it at every batch size; its results keyed by batch size."""
    if name in FRAMEWORKS:
        return bench_framework(name, configs, args)
    if name.startswith("ours"):
        config = configs.ours_per_layer if name == "ours-ple" else configs.ours
        model = build_model(config, args.ours_attn, args.device)
    else:
        model = build_model(configs.gemma2, args.gemma2_attn, args.device)
    model.to(DTYPES[args.dtype]).eval()
    static = name.endswith("-static")
    described = {"implementation": type(model).__name__, "attn_implementation": attention_backend(model, args.device),
                 "cache": "static" if static else "dynamic",
                 "compiled": static and args.compile and args.device.type == "cuda"}
    results = {}
    for batch in args.batch:
        release_memory(args.device)
        results[str(batch)] = {**described, **measure_generation(model, args, batch, static)}
    return results


def run_one(name: str, configs, args: argparse.Namespace) -> dict:
    """One model's results by batch size; a failure is recorded for every batch size."""
    result = run_isolated(lambda: bench_model(name, configs, args), args.device)
    return {str(batch): result for batch in args.batch} if "error" in result else result


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


def print_report(report: dict) -> None:
    settings = report["settings"]
    print(f"\nbench generate on {report['environment']['device']}: size {settings['size']}, prompt "
          f"{settings['prompt_len']}, {settings['new_tokens']} new tokens, greedy, {settings['dtype']} weights, "
          f"median of {settings['repeats']}\n")
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
    print(format_table(["batch", "model", "attention", "cache", "compiled", "tokens/s", "ms/token", "peak GiB",
                        "warmup s"], rows))
    print("\n".join(notes))
    for batch, pairs in report["ratios"].items():
        if pairs:
            print(f"batch {batch}: " + ", ".join(f"{pair} {value:.2f}x" for pair, value in pairs.items()))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    configs = build_configs(args, max_positions=args.prompt_len + args.new_tokens)
    save = (lambda per_model: write_json(args.json, build_report(per_model, args))) if args.json else None
    per_model = run_models(args.models, lambda name: run_one(name, configs, args), desc="bench generate",
                           after_each=save)
    report = build_report(per_model, args)
    print_report(report)
    failed = any("error" in result for results in report["results"].values() for result in results.values())
    return 1 if failed else 0


def build_report(per_model: dict, args: argparse.Namespace) -> dict:
    """Environment, settings, and the results and ratios by batch size of the models measured so far."""
    by_batch = {str(batch): {name: result[str(batch)] for name, result in per_model.items()} for batch in args.batch}
    return {
        "benchmark": "generate",
        "environment": environment(args.device),
        "settings": {
            "size": args.size, "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "repeats": args.repeats, "dtype": args.dtype, "compile": args.compile, "vocab_size": args.vocab_size,
            "attn_softcap": args.attn_softcap or None, "final_softcap": args.final_softcap or None,
            "ours_attn": args.ours_attn, "gemma2_attn": args.gemma2_attn, "models": args.models,
        },
        "results": by_batch,
        "ratios": ratios(by_batch),
    }
