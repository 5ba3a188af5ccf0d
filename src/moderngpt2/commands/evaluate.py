"""Perplexity of a checkpoint on held-out text, or lm-evaluation-harness task scores.

    moderngpt2 evaluate --model out/final --input data/pretokenized
    moderngpt2 evaluate --model out/final --input heldout.jsonl --block_size 512
    moderngpt2 evaluate --model out/final --tasks hellaswag,arc_easy --limit 100
"""

from dataclasses import dataclass

from ..arguments import DeviceArguments, SourceArguments, arg, parse_command
from ..errors import UserError
from ..evaluate import evaluate_perplexity
from ..fileio import write_json
from ..frameworks import FrameworkArguments


@dataclass
class EvaluateArguments:
    _argument_group_name = "evaluation"

    model: str = arg(help="model directory (OUTPUT/final of `moderngpt2 train`)")
    split: str = arg("validation", "split of pretokenized data")
    per_layer_data_path: str | None = arg(None, "explicit per-layer id streams of pretokenized data")
    block_size: int | None = arg(
        None, "tokens per block for text and Megatron input (default: the model's n_positions)")
    batch_size: int = arg(8, "blocks (or harness requests) per forward pass")
    max_blocks: int | None = arg(None, "evaluate at most this many blocks")
    output_json: str | None = arg(None, "also write the numbers to this JSON file", aliases=("--json",))

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"--batch_size {self.batch_size}: must be at least 1")


@dataclass
class HarnessArguments:
    _argument_group_name = "benchmarks through lm-evaluation-harness (instead of --input)"

    tasks: str | None = arg(None, "comma-separated lm-eval task names, e.g. hellaswag,arc_easy,lambada_openai")
    num_fewshot: int | None = arg(None, "few-shot examples per prompt (default: each task's own setting)")
    limit: float | None = arg(None, "documents per task (an integer), or a fraction of each task if below 1")
    include_path: str | None = arg(None, "a directory of extra task YAML files (local tasks)")


def main(argv: list[str]) -> int:
    options, source, harness, framework, device = parse_command(
        "moderngpt2 evaluate",
        [EvaluateArguments, SourceArguments, HarnessArguments, FrameworkArguments, DeviceArguments], argv,
        description=__doc__.splitlines()[0])
    if bool(source.source_specs()) == (harness.tasks is not None):
        raise UserError("give either --input (perplexity on held-out text) or --tasks (lm-evaluation-harness)")
    if harness.tasks is not None:
        from ..harness import evaluate_tasks

        if framework.framework != "torch":
            raise UserError(f"--tasks runs the PyTorch model through lm-evaluation-harness; "
                            f"drop --framework {framework.framework}")
        evaluate_tasks(options.model, harness.tasks, num_fewshot=harness.num_fewshot, limit=harness.limit,
                       include_path=harness.include_path, batch_size=options.batch_size, device=device.device,
                       dtype=device.dtype, output_json=options.output_json)
        return 0
    result = evaluate_perplexity(
        options.model, source, split=options.split, per_layer_data_path=options.per_layer_data_path,
        block_size=options.block_size, batch_size=options.batch_size, max_blocks=options.max_blocks,
        framework=framework.framework, device=device.device, dtype=device.dtype)
    print(f"perplexity {result['perplexity']:.4f} (loss {result['loss']:.4f} nats/token over {result['tokens']} "
          f"tokens in {result['blocks']} blocks)")
    if options.output_json:
        write_json(options.output_json, result)
    return 0
