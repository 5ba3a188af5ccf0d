"""Loss curves as a PNG, from a Trainer's log history or a `trainer_state.json`."""

import json
import os


def read_log_history(source) -> list[dict]:
    """`source`: a list of log dicts, a `trainer_state.json` path, or a directory holding one."""
    if isinstance(source, (list, tuple)):
        return list(source)
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "trainer_state.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["log_history"]


def loss_series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return [step for step, _ in points], [value for _, value in points]


def plot_loss_curves(source, out_png, runs: dict | None = None, title: str = "Training loss") -> str:
    """Plot train (and eval, when present) loss against the step; returns the path written.

    To compare runs, pass `runs` ({label: source}) instead of `source` (then None): every run gets one colour,
    solid for train and dashed with markers for eval loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"": source} if runs is None else runs
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (label, run_source) in enumerate(runs.items()):
        history = read_log_history(run_source)
        colour = f"C{index}"
        for key, style, suffix in (("loss", "-", "train"), ("eval_loss", "--", "eval")):
            steps, values = loss_series(history, key)
            if steps:
                name = f"{label} {suffix}".strip()
                axis.plot(steps, values, style, color=colour, label=name, marker="o" if suffix == "eval" else None)
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return os.fspath(out_png)
