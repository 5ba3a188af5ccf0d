"""Bad inputs and faults of `moderngpt2 generate` and `moderngpt2 evaluate`, each through the real command line in
a subprocess: exit status 2, one line on stderr naming the file or flag, no traceback, nothing overwritten."""

import json
import shutil

from battery import error_line, run_cli, small_tmpfs


def generate(model, *args):
    return run_cli("generate", "--model", model, "--device", "cpu", *args)


def evaluate(model, *args):
    return run_cli("evaluate", "--model", model, "--device", "cpu", *args)


def test_an_empty_prompt(battery_run):
    error_line(generate(battery_run / "final", "--prompt", ""), "--prompt #1", "empty")


def test_max_new_tokens_past_the_context(battery_run):
    error_line(generate(battery_run / "final", "--prompt", "The cat", "--max_new_tokens", "64"),
               "--max_new_tokens 64", "32")


def test_evaluation_text_shorter_than_one_block(battery_run, tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "The cat."}) + "\n")
    error_line(evaluate(battery_run / "final", "--input", short), "short.jsonl", "less than one block")


def test_a_checkpoint_from_another_model_type(battery_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(battery_run / "final", other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "gpt2"
    (other / "config.json").write_text(json.dumps(config))
    error_line(generate(other, "--prompt", "The cat"), "other", "'gpt2'", "moderngpt2")
    error_line(evaluate(other, "--input", "x.jsonl"), "other", "'gpt2'")


def test_a_truncated_model_safetensors_in_final(battery_run, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(battery_run / "final", final)
    weights = final / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
    error_line(generate(final, "--prompt", "The cat"), "model.safetensors", "damaged", "re-save")
    error_line(evaluate(final, "--input", "x.jsonl"), "model.safetensors", "damaged")


def test_evaluate_output_json_on_a_directory_or_a_read_only_disk(battery_run, tiny_assets, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    data = tiny_assets["data"]
    error_line(evaluate(battery_run / "final", "--input", data, "--max_blocks", "2", "--output_json", taken),
               "taken")
    blocker = tmp_path / "blocker"
    blocker.write_text("keep\n")
    error_line(evaluate(battery_run / "final", "--input", data, "--max_blocks", "2", "--output_json",
                        blocker / "result.json"), "blocker")
    assert blocker.read_text() == "keep\n"
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        error_line(evaluate(battery_run / "final", "--input", data, "--max_blocks", "2", "--output_json",
                            read_only / "result.json"), "read-only")


def test_final_holds_no_pickle(battery_run):
    """Every file a run leaves in final/ is read without unpickling (safetensors, JSON, text)."""
    for path in (battery_run / "final").iterdir():
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and not head.startswith(b"PK\x03\x04"), f"{path.name} looks pickled"
