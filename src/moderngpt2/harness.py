"""``moderngpt2 evaluate --tasks ...``: benchmark scores from EleutherAI's lm-evaluation-harness.

The harness runs our model object through its Hugging Face backend (``HFLM``), so per-layer models work
as they are (their token map lives in the model) and no checkpoint conversion is needed. Hub tasks
(hellaswag, arc_easy, lambada_openai, ...) download their data on first use; ``--include_path`` adds local
task YAML files, which is how tests and offline machines run it.
"""

import os

from .errors import UserError
from .fileio import write_json
from .loading import load_checkpoint

INSTALL_HINT = "install it with: pip install 'moderngpt2[eval]'"


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


def prepare_harness(tasks_text: str, num_fewshot: int | None, limit: float | None, include_path: str | None):
    """Check the harness settings and find the tasks before any model is loaded: (tasks, task manager)."""
    _, _, TaskManager, _, _ = _import_lm_eval()
    tasks = _split_tasks(tasks_text)
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num_fewshot {num_fewshot}: must be 0 or more")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit {limit}: must be positive")
    if include_path is not None and not os.path.isdir(include_path):
        raise UserError(f"--include_path {include_path}: no such directory")
    task_manager = _task_manager(TaskManager, tasks, include_path)
    unknown = [task for task in tasks if not task_manager.match_tasks([task])]
    if unknown:
        raise UserError(f"--tasks: unknown task(s) {', '.join(unknown)}; list them with `lm-eval ls tasks`, or give "
                        "--include_path for local task files")
    return tasks, task_manager


def evaluate_tasks(model_dir: str, tasks_text: str, *, num_fewshot: int | None, limit: float | None,
                   include_path: str | None, batch_size: int, device: str, dtype: str,
                   output_json: str | None) -> dict:
    """Run lm-eval tasks on a checkpoint; print lm-eval's table, write its JSON; return its results.

    `limit` is a document count per task (1 or more) or a fraction of each task (below 1).
    """
    lm_eval, HFLM, _, make_table, handle_non_serializable = _import_lm_eval()
    tasks, task_manager = prepare_harness(tasks_text, num_fewshot, limit, include_path)
    model, tokenizer = load_checkpoint(model_dir, device, dtype)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=model.config.n_positions)
    limit = None if limit is None else (int(limit) if limit >= 1 else limit)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=task_manager, log_samples=False)
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    if output_json:
        write_json(output_json, results, default=handle_non_serializable)
    return results
