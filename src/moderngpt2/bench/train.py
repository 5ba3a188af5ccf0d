"""``moderngpt2 bench train``: training throughput of our model against transformers' Gemma2 and Llama.

Every model gets the same shapes, the same random token batch and full training steps (forward, backward,
AdamW — fused on CUDA) under bf16 autocast, in one process, one model at a time. Warmup steps (compilation
included) are timed separately and excluded from tokens/s. Reports a table and the ratios the speed targets
are stated in; ``--output_json`` keeps everything.
"""

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..arguments import arg
from ..devices import HOPPER_BF16_PEAK_TFLOPS, default_peak_tflops
from ..errors import UserError
from ..flops import matmul_parameter_count, model_flops_utilization, training_flops_per_token
from .common import (
    DeviceTimer,
    attention_backend,
    autocast,
    build_model,
    environment,
    format_table,
    graph_break_count,
    measure_models,
    parse_model_list,
    peak_memory_gib,
    ratio,
    resolve_model_bench,
    run_isolated,
)

MODELS = ("ours", "ours-ple", "gemma2-eager", "gemma2-flex", "llama-sdpa")
DEFAULT_MODELS = "ours,gemma2-eager,gemma2-flex,llama-sdpa"

# Targets on one H100: minimum MFU by size (softcaps on), speedup over Gemma2's best, PLE step-time overhead by size.
MFU_TARGETS = {"small": 0.45, "medium": 0.55}
SPEEDUP_OVER_GEMMA2_TARGET = 1.3
PER_LAYER_OVERHEAD_TARGETS = {"small": 0.08, "medium": 0.05}


@dataclass
class TrainBenchArguments:
    """The training steps every model runs, which models, and the peak MFU is stated against."""

    _argument_group_name = "training benchmark"

    batch: int = arg(16, "sequences per step")
    seq: int = arg(1024, "tokens per sequence")
    steps: int = arg(20, "timed steps per model")
    warmup: int = arg(3, "untimed steps first, compilation included")
    models: str = arg(DEFAULT_MODELS, f"comma-separated subset of {', '.join(MODELS)} "
                                      "(--use_per_layer_embedding adds ours-ple)")
    peak_tflops: float | None = arg(None, f"device peak for MFU (default: {HOPPER_BF16_PEAK_TFLOPS:g} on an H100 in "
                                          "bf16, otherwise MFU is n/a)")
    compile_backend: str = arg("inductor", "torch.compile backend ('eager' finds graph breaks in seconds)")

    def __post_init__(self):
        for flag in ("batch", "seq", "steps"):
            if getattr(self, flag) <= 0:
                raise UserError(f"--{flag} must be a positive integer, got {getattr(self, flag)}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UserError(f"--peak_tflops must be positive, got {self.peak_tflops}")


def resolve_settings(*groups) -> SimpleNamespace:
    """The parsed groups (TrainBenchArguments and the shared ones) as the settings of one run on this machine."""
    settings = resolve_model_bench(groups)
    if settings.warmup < 0 or (settings.compile and settings.warmup == 0):
        raise UserError("--warmup must be at least 1 with --compile (the first step compiles), and never negative")
    settings.models = parse_model_list(settings.models, MODELS)
    if settings.per_layer and "ours-ple" not in settings.models:
        settings.models.append("ours-ple")
    if settings.peak_tflops is None:
        settings.peak_tflops = default_peak_tflops(settings.device, settings.dtype)
    return settings


# ----------------------------------------------------------------------------------------------- one model


def measure_training(model: torch.nn.Module, settings: SimpleNamespace) -> dict:
    """Time ``settings.steps`` full training steps after ``settings.warmup`` untimed ones."""
    device = settings.device
    model.train()
    step_model = torch.compile(model, backend=settings.compile_backend) if settings.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    tokens = torch.randint(0, model.config.vocab_size, (settings.batch, settings.seq), generator=generator).to(device)

    def step() -> torch.Tensor:
        with autocast(device, settings.dtype):
            loss = step_model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    with DeviceTimer(device) as warmup:
        for _ in range(settings.warmup):
            step()
    with DeviceTimer(device) as timed:
        for _ in range(settings.steps):
            loss = step()

    matmul_params = matmul_parameter_count(model)
    config = model.config
    flops = training_flops_per_token(matmul_params, config.num_hidden_layers,
                                     config.num_attention_heads * config.head_dim, settings.seq)
    tokens_per_s = settings.batch * settings.seq * settings.steps / timed.seconds
    return {
        "implementation": type(model).__name__,
        "attn_implementation": attention_backend(model, settings.device),
        "compiled": settings.compile,
        "tokens_per_s": tokens_per_s,
        "step_time_s": timed.seconds / settings.steps,
        "mfu": model_flops_utilization(tokens_per_s, flops, settings.peak_tflops),
        "peak_memory_gib": peak_memory_gib(device),
        "warmup_s": warmup.seconds,
        "graph_breaks": graph_break_count() if settings.compile else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "matmul_parameters": matmul_params,
        "flops_per_token": flops,
        "final_loss": loss.item(),
    }


def bench_ours(configs, settings) -> dict:
    return measure_training(build_model(configs.ours, settings.ours_attn, settings.device), settings)


def bench_ours_per_layer(configs, settings) -> dict:
    return measure_training(build_model(configs.ours_per_layer, settings.ours_attn, settings.device), settings)


def bench_gemma2_eager(configs, settings) -> dict:
    return measure_training(build_model(configs.gemma2, "eager", settings.device), settings)


def bench_gemma2_flex(configs, settings) -> dict:
    return measure_training(build_model(configs.gemma2, "flex_attention", settings.device), settings)


def bench_llama_sdpa(configs, settings) -> dict:
    return measure_training(build_model(configs.llama, "sdpa", settings.device), settings)


BENCHES = {
    "ours": bench_ours,
    "ours-ple": bench_ours_per_layer,
    "gemma2-eager": bench_gemma2_eager,
    "gemma2-flex": bench_gemma2_flex,
    "llama-sdpa": bench_llama_sdpa,
}


def skip_reason(name: str, settings: SimpleNamespace) -> str | None:
    if name == "gemma2-flex" and settings.device.type != "cuda":
        return "FlexAttention has no backward on the CPU"
    return None


def run_one(name: str, configs, settings: SimpleNamespace) -> dict:
    """One model's result, or why it was skipped or failed."""
    reason = skip_reason(name, settings)
    if reason:
        return {"skipped": reason}
    return run_isolated(lambda: BENCHES[name](configs, settings), settings.device)

# ----------------------------------------------------------------------------------------------- summary


def measured(results: dict, name: str) -> dict | None:
    result = results.get(name)
    return result if result and "tokens_per_s" in result else None


def summarize(results: dict, settings: dict) -> dict:
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
    summary["targets"] = targets(summary, ours, settings)
    return summary


def targets(summary: dict, ours: dict | None, settings: dict) -> list[dict]:
    """The issue's targets that apply to this run (they are stated for one H100)."""
    softcapped = bool(settings["attn_softcap"] or settings["final_softcap"])
    size = settings["size"]
    checks = []
    if softcapped:
        checks.append(("ours / gemma2-best tokens/s", summary["ours_over_gemma2_best"], SPEEDUP_OVER_GEMMA2_TARGET,
                       ">="))
        if size in MFU_TARGETS:
            checks.append(("ours MFU", ours and ours["mfu"], MFU_TARGETS[size], ">="))
        checks.append(("ours / gemma2-flex peak memory", summary["ours_memory_over_gemma2_flex"], 1.0, "<="))
    else:
        checks.append(("ours / llama-sdpa tokens/s", summary["ours_over_llama_sdpa"], 1.0, ">="))
    if size in PER_LAYER_OVERHEAD_TARGETS:
        checks.append(("per-layer embedding step-time overhead", summary["per_layer_overhead"],
                       PER_LAYER_OVERHEAD_TARGETS[size], "<="))
    return [
        {"target": what, "value": value, "threshold": threshold, "comparison": op,
         "met": None if value is None else (value >= threshold if op == ">=" else value <= threshold)}
        for what, value, threshold, op in checks
    ]


def format_report(report: dict) -> str:
    """The table, the ratios and the targets, as printed after a run."""
    settings, results, summary = report["settings"], report["models"], report["summary"]
    lines = [f"\nbench train on {report['environment']['device']}: size {settings['size']}, "
             f"batch {settings['batch']}, seq {settings['seq']}, {settings['dtype']}, softcaps "
             f"{settings['attn_softcap'] or 'off'}/{settings['final_softcap'] or 'off'}, compile "
             f"{'on' if settings['compile'] else 'off'}, {settings['steps']} steps after {settings['warmup']} warmup\n"]
    rows, notes = [], []
    for name, result in results.items():
        if "tokens_per_s" in result:
            rows.append([name, result["attn_implementation"], result["tokens_per_s"], result["step_time_s"] * 1000,
                         result["mfu"], result["peak_memory_gib"], result["warmup_s"], result["graph_breaks"]])
        else:
            outcome = "skipped" if "skipped" in result else "failed"
            rows.append([name, outcome] + [None] * 6)
            notes.append(f"{name} {outcome}: {result.get('skipped') or result.get('error')}")
    lines.append(format_table(
        ["model", "attention", "tokens/s", "step ms", "MFU", "peak GiB", "warmup s", "graph breaks"], rows))
    lines.append("\n".join(notes) + "\n")
    lines.append(f"ours / gemma2-best ({summary['gemma2_best'] or 'n/a'}): {_times(summary['ours_over_gemma2_best'])}")
    lines.append(f"ours / llama-sdpa: {_times(summary['ours_over_llama_sdpa'])}")
    if summary["per_layer_overhead"] is not None:
        lines.append(f"per-layer embedding overhead (step time): {summary['per_layer_overhead']:+.1%}")
    note = "" if report["environment"]["device_type"] == "cuda" else " (stated for one H100; not a claim here)"
    lines.append(f"\ntargets{note}:")
    for target in summary["targets"]:
        value = "n/a" if target["value"] is None else f"{target['value']:.3f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"  {target['target']}: {value} (want {target['comparison']} {target['threshold']:g}) {verdict}")
    return "\n".join(lines)


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def run_benchmark(settings: SimpleNamespace) -> dict:
    """Measure every model in turn; the report (rewritten to --output_json after each model) of all of them."""
    return measure_models(settings, settings.seq, run_one, build_report, desc="bench train")


def failed(report: dict) -> bool:
    return any("error" in result for result in report["models"].values())


def build_report(results: dict, configs, settings: SimpleNamespace) -> dict:
    """Environment, settings, the models measured so far and the summary over them."""
    per_layer = configs.ours_per_layer
    report = {
        "benchmark": "train",
        "environment": environment(settings.device),
        "settings": {
            "size": settings.model_size_name, "batch": settings.batch, "seq": settings.seq, "steps": settings.steps,
            "warmup": settings.warmup,
            "dtype": settings.dtype, "compile": settings.compile,
            "compile_backend": settings.compile_backend if settings.compile else None,
            "vocab_size": configs.ours.vocab_size,
            "attn_softcap": configs.ours.attn_logit_softcapping,
            "final_softcap": configs.ours.final_logit_softcapping,
            "per_layer_hidden_size": per_layer.per_layer_hidden_size if "ours-ple" in settings.models else None,
            "per_layer_vocab_size": per_layer.per_layer_vocab_size if "ours-ple" in settings.models else None,
            "ours_attn": settings.ours_attn, "peak_tflops": settings.peak_tflops, "models": settings.models,
        },
        "models": results,
    }
    report["summary"] = summarize(results, report["settings"])
    return report
