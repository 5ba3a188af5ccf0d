"""``moderngpt2 bench train``: training throughput of our model against transformers' Gemma2 and Llama.

Every model gets the same shapes, the same random token batch and full training steps (forward, backward,
AdamW — fused on CUDA) under bf16 autocast, in one process, one model at a time. Warmup steps (compilation
included) are timed separately and excluded from tokens/s. Prints a table and the ratios the speed targets
are stated in; ``--json`` keeps everything.
"""

import argparse

import torch

from ..argparsing import CommandParser
from ..devices import HOPPER_BF16_PEAK_TFLOPS, default_peak_tflops
from ..errors import UserError
from ..flops import matmul_parameter_count, model_flops_utilization, training_flops_per_token
from .common import (
    DeviceTimer,
    add_common_arguments,
    attention_backend,
    autocast,
    build_configs,
    build_model,
    environment,
    format_table,
    graph_break_count,
    parse_model_list,
    peak_memory_gib,
    ratio,
    run_isolated,
    run_models,
    resolve_run_settings,
    write_json,
)

MODELS = ("ours", "ours-ple", "gemma2-eager", "gemma2-flex", "llama-sdpa")
DEFAULT_MODELS = "ours,gemma2-eager,gemma2-flex,llama-sdpa"

# Targets on one H100: minimum MFU by size (softcaps on), speedup over Gemma2's best, PLE step-time overhead by size.
MFU_TARGETS = {"small": 0.45, "medium": 0.55}
SPEEDUP_OVER_GEMMA2_TARGET = 1.3
PER_LAYER_OVERHEAD_TARGETS = {"small": 0.08, "medium": 0.05}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="moderngpt2 bench train",
        description="Training tokens/s, MFU and peak memory of ModernGPT2 against transformers' Gemma2 and Llama "
                    "at identical shapes.")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default: 16)")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence (default: 1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default: 3)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated subset of {', '.join(MODELS)} (default: {DEFAULT_MODELS}; "
                             "--per-layer adds ours-ple)")
    parser.add_argument("--peak-tflops", "--peak_tflops", type=float, default=None,
                        help=f"device peak for MFU (default: {HOPPER_BF16_PEAK_TFLOPS:g} on an H100 in bf16, "
                             "otherwise MFU is n/a)")
    parser.add_argument("--compile-backend", "--compile_backend", default="inductor",
                        help="torch.compile backend (default: inductor; 'eager' finds graph breaks in seconds)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    resolve_run_settings(args)
    for flag in ("batch", "seq", "steps"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.warmup < 0 or (args.compile and args.warmup == 0):
        raise UserError("--warmup must be at least 1 with --compile (the first step compiles), and never negative")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise UserError(f"--peak-tflops must be positive, got {args.peak_tflops}")
    args.models = parse_model_list(args.models, MODELS)
    if args.per_layer and "ours-ple" not in args.models:
        args.models.append("ours-ple")
    if args.peak_tflops is None:
        args.peak_tflops = default_peak_tflops(args.device, "bfloat16" if args.dtype == "bf16" else args.dtype)
    return args


# ----------------------------------------------------------------------------------------------- one model


def measure_training(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` full training steps after ``args.warmup`` untimed ones."""
    device = args.device
    model.train()
    step_model = torch.compile(model, backend=args.compile_backend) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    tokens = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=generator).to(device)

    def step() -> torch.Tensor:
        with autocast(device, args.dtype):
            loss = step_model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    with DeviceTimer(device) as warmup:
        for _ in range(args.warmup):
            step()
    with DeviceTimer(device) as timed:
        for _ in range(args.steps):
            loss = step()

    matmul_params = matmul_parameter_count(model)
    config = model.config
    flops = training_flops_per_token(matmul_params, config.num_hidden_layers,
                                     config.num_attention_heads * config.head_dim, args.seq)
    tokens_per_s = args.batch * args.seq * args.steps / timed.seconds
    return {
        "implementation": type(model).__name__,
        "attn_implementation": attention_backend(model, args.device),
        "compiled": args.compile,
        "tokens_per_s": tokens_per_s,
        "step_time_s": timed.seconds / args.steps,
        "mfu": model_flops_utilization(tokens_per_s, flops, args.peak_tflops),
        "peak_memory_gib": peak_memory_gib(device),
        "warmup_s": warmup.seconds,
        "graph_breaks": graph_break_count() if args.compile else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "matmul_parameters": matmul_params,
        "flops_per_token": flops,
        "final_loss": loss.item(),
    }


def bench_ours(configs, args) -> dict:
    return measure_training(build_model(configs.ours, args.ours_attn, args.device), args)


def bench_ours_per_layer(configs, args) -> dict:
    return measure_training(build_model(configs.ours_per_layer, args.ours_attn, args.device), args)


def bench_gemma2_eager(configs, args) -> dict:
    return measure_training(build_model(configs.gemma2, "eager", args.device), args)


def bench_gemma2_flex(configs, args) -> dict:
    return measure_training(build_model(configs.gemma2, "flex_attention", args.device), args)


def bench_llama_sdpa(configs, args) -> dict:
    return measure_training(build_model(configs.llama, "sdpa", args.device), args)


BENCHES = {
    "ours": bench_ours,
    "ours-ple": bench_ours_per_layer,
    "gemma2-eager": bench_gemma2_eager,
    "gemma2-flex": bench_gemma2_flex,
    "llama-sdpa": bench_llama_sdpa,
}


def skip_reason(name: str, args: argparse.Namespace) -> str | None:
    if name == "gemma2-flex" and args.device.type != "cuda":
        return "FlexAttention has no backward on the CPU"
    return None


def run_one(name: str, configs, args: argparse.Namespace) -> dict:
    """One model's result, or why it was skipped or failed."""
    reason = skip_reason(name, args)
    if reason:
        return {"skipped": reason}
    return run_isolated(lambda: BENCHES[name](configs, args), args.device)

# ----------------------------------------------------------------------------------------------- summary


def measured(results: dict, name: str) -> dict | None:
    result = results.get(name)
    return result if result and "tokens_per_s" in result else None


def summarize(results: dict, args: argparse.Namespace) -> dict:
    """The ratios the targets are stated in, and whether each target is met."""
    gemma2 = [name for name in ("gemma2-eager", "gemma2-flex") if measured(results, name)]
    gemma2_best = max(gemma2, key=lambda name: results[name]["tokens_per_s"]) if gemma2 else None
    tokens_per_s = {name: result["tokens_per_s"] for name, result in results.items() if "tokens_per_s" in result}
    ours, ple, flex = measured(results, "ours"), measured(results, "ours-ple"), measured(results, "gemma2-flex")
    summary = {
        "gemma2_best": gemma2_best,
        "ours_over_gemma2_best": ratio(tokens_per_s.get("ours"), tokens_per_s.get(gemma2_best)),
        "ours_over_llama_sdpa": ratio(tokens_per_s.get("ours"), tokens_per_s.get("llama-sdpa")),
        # PLE overhead in step time: t_ple / t_ours - 1, i.e. (tokens/s of ours) / (tokens/s of ours-ple) - 1.
        "per_layer_overhead": (ratio(tokens_per_s.get("ours"), tokens_per_s.get("ours-ple")) - 1.0
                               if ours and ple else None),
        "ours_memory_over_gemma2_flex": (ratio(ours["peak_memory_gib"], flex["peak_memory_gib"])
                                         if ours and flex else None),
    }
    summary["targets"] = targets(summary, ours, args)
    return summary


def targets(summary: dict, ours: dict | None, args: argparse.Namespace) -> list[dict]:
    """The issue's targets that apply to this run (they are stated for one H100)."""
    softcapped = bool(args.attn_softcap or args.final_softcap)
    checks = []
    if softcapped:
        checks.append(("ours / gemma2-best tokens/s", summary["ours_over_gemma2_best"], SPEEDUP_OVER_GEMMA2_TARGET,
                       ">="))
        if args.size in MFU_TARGETS:
            checks.append(("ours MFU", ours and ours["mfu"], MFU_TARGETS[args.size], ">="))
        checks.append(("ours / gemma2-flex peak memory", summary["ours_memory_over_gemma2_flex"], 1.0, "<="))
    else:
        checks.append(("ours / llama-sdpa tokens/s", summary["ours_over_llama_sdpa"], 1.0, ">="))
    if args.size in PER_LAYER_OVERHEAD_TARGETS:
        checks.append(("per-layer embedding step-time overhead", summary["per_layer_overhead"],
                       PER_LAYER_OVERHEAD_TARGETS[args.size], "<="))
    return [
        {"target": what, "value": value, "threshold": threshold, "comparison": op,
         "met": None if value is None else (value >= threshold if op == ">=" else value <= threshold)}
        for what, value, threshold, op in checks
    ]


def print_report(report: dict) -> None:
    settings, results, summary = report["settings"], report["models"], report["summary"]
    print(f"\nbench train on {report['environment']['device']}: size {settings['size']}, batch {settings['batch']}, "
          f"seq {settings['seq']}, {settings['dtype']}, softcaps {settings['attn_softcap'] or 'off'}/"
          f"{settings['final_softcap'] or 'off'}, compile {'on' if settings['compile'] else 'off'}, "
          f"{settings['steps']} steps after {settings['warmup']} warmup\n")
    rows, notes = [], []
    for name, result in results.items():
        if "tokens_per_s" in result:
            rows.append([name, result["attn_implementation"], result["tokens_per_s"], result["step_time_s"] * 1000,
                         result["mfu"], result["peak_memory_gib"], result["warmup_s"], result["graph_breaks"]])
        else:
            outcome = "skipped" if "skipped" in result else "failed"
            rows.append([name, outcome] + [None] * 6)
            notes.append(f"{name} {outcome}: {result.get('skipped') or result.get('error')}")
    print(format_table(["model", "attention", "tokens/s", "step ms", "MFU", "peak GiB", "warmup s", "graph breaks"],
                       rows))
    print("\n".join(notes) + "\n")
    print(f"ours / gemma2-best ({summary['gemma2_best'] or 'n/a'}): {_times(summary['ours_over_gemma2_best'])}")
    print(f"ours / llama-sdpa: {_times(summary['ours_over_llama_sdpa'])}")
    if summary["per_layer_overhead"] is not None:
        print(f"per-layer embedding overhead (step time): {summary['per_layer_overhead']:+.1%}")
    note = "" if report["environment"]["device_type"] == "cuda" else " (stated for one H100; not a claim here)"
    print(f"\ntargets{note}:")
    for target in summary["targets"]:
        value = "n/a" if target["value"] is None else f"{target['value']:.3f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        print(f"  {target['target']}: {value} (want {target['comparison']} {target['threshold']:g}) {verdict}")


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    configs = build_configs(args, max_positions=args.seq)
    save = (lambda results: write_json(args.json, build_report(results, args))) if args.json else None
    results = run_models(args.models, lambda name: run_one(name, configs, args), desc="bench train", after_each=save)
    report = build_report(results, args)
    print_report(report)
    return 1 if any("error" in result for result in results.values()) else 0


def build_report(results: dict, args: argparse.Namespace) -> dict:
    """Environment, settings, the models measured so far and the summary over them."""
    report = {
        "benchmark": "train",
        "environment": environment(args.device),
        "settings": {
            "size": args.size, "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup,
            "dtype": args.dtype, "compile": args.compile,
            "compile_backend": args.compile_backend if args.compile else None, "vocab_size": args.vocab_size,
            "attn_softcap": args.attn_softcap or None, "final_softcap": args.final_softcap or None,
            "per_layer_hidden_size": args.per_layer_hidden_size if "ours-ple" in args.models else None,
            "per_layer_vocab_size": args.per_layer_vocab_size if "ours-ple" in args.models else None,
            "ours_attn": args.ours_attn, "peak_tflops": args.peak_tflops, "models": args.models,
        },
        "models": results,
    }
    report["summary"] = summarize(results, args)
    return report
