"""``moderngpt2 evaluate --tasks ...``: benchmark scores from EleutherAI's lm-evaluation-harness.

The harness runs our model object through its Hugging Face backend (``HFLM``), so per-layer models work
as they are (their token map lives in the model) and no checkpoint conversion is needed. Hub tasks
(hellaswag, arc_easy, lambada_openai, ...) download their data on first use; ``--include_path`` adds local
task YAML files, which is how tests and offline machines run it.
"""

import json
import os

from .data.arguments import add_flag
from .errors import UserError

INSTALL_HINT = "install it with: pip install 'moderngpt2[eval]'"


def add_harness_flags(parser) -> None:
    """The flag group of the harness path (--model, --batch_size, --device, --dtype, --output_json are shared)."""
    group = parser.add_argument_group("benchmarks through lm-evaluation-harness (instead of --input)")
    add_flag(group, "--tasks", default=None,
             help="comma-separated lm-eval task names, e.g. hellaswag,arc_easy,lambada_openai")
    add_flag(group, "--num_fewshot", type=int, default=None,
             help="few-shot examples per prompt (default: each task's own setting)")
    add_flag(group, "--limit", type=float, default=None,
             help="documents per task (an integer), or a fraction of each task if below 1")
    add_flag(group, "--include_path", default=None, help="a directory of extra task YAML files (local tasks)")


def _split_tasks(text: str) -> list[str]:
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    if not tasks:
        raise UserError("--tasks is empty; give comma-separated lm-eval task names, e.g. --tasks hellaswag,arc_easy")
    return tasks


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable, make_table
    except ImportError:
        raise UserError(f"--tasks needs lm-evaluation-harness (lm-eval), which is not installed; {INSTALL_HINT}") \
            from None
    return lm_eval, HFLM, TaskManager, make_table, handle_non_serializable


def _task_manager(TaskManager, tasks: list[str], include_path):
    """A TaskManager that knows `tasks`. Indexing lm-eval's thousands of bundled task files takes half a
    minute, so tasks found entirely under --include_path are served from there alone."""
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([task]) for task in tasks):
            return local
    return TaskManager(include_path=include_path)


def prepare_harness(args):
    """Check the harness flags and find the tasks before any model is loaded; returns what `run_harness` needs."""
    lm_eval, HFLM, TaskManager, make_table, handle_non_serializable = _import_lm_eval()
    tasks = _split_tasks(args.tasks)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num_fewshot {args.num_fewshot}: must be 0 or more")
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit {args.limit}: must be positive")
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise UserError(f"--include_path {args.include_path}: no such directory")
    task_manager = _task_manager(TaskManager, tasks, args.include_path)
    unknown = [task for task in tasks if not task_manager.match_tasks([task])]
    if unknown:
        raise UserError(f"--tasks: unknown task(s) {', '.join(unknown)}; list them with `lm-eval ls tasks`, or give "
                        "--include_path for local task files")
    return tasks, task_manager


def run_harness(args, prepared, model, tokenizer) -> dict:
    """Run the prepared tasks on a loaded model; print lm-eval's table, write its JSON; return its results."""
    lm_eval, HFLM, _, make_table, handle_non_serializable = _import_lm_eval()
    tasks, task_manager = prepared
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=model.config.n_positions)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=limit,
                                      task_manager=task_manager, log_samples=False)
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=handle_non_serializable)
    return results
