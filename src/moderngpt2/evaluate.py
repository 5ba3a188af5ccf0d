"""`moderngpt2 evaluate`: perplexity of a checkpoint on held-out text.

The input is either pretokenized data (a `moderngpt2 pretokenize` directory, its validation split by default,
or a Megatron prefix) or raw text (JSON Lines, .txt, Parquet, `datasets` sources), tokenized here with the
checkpoint's tokenizer, joined with EOS and cut into blocks. Perplexity is exp of the mean negative
log-likelihood per predicted token over all blocks (token-weighted, not an average of per-block values).

    moderngpt2 evaluate --model out/final --input data/pretokenized
    moderngpt2 evaluate --model out/final --input heldout.jsonl --block_size 512
    moderngpt2 evaluate --model out/final --tasks hellaswag,arc_easy --limit 100   # lm-evaluation-harness
"""

import argparse
import math
import os

import torch
from tqdm.auto import tqdm

from .argparsing import CommandParser
from .data.arguments import add_flag
from .errors import UserError
from .fileio import write_json
from .frameworks import FRAMEWORKS, check_torch_only_flags, load_causal_lm
from .harness import add_harness_flags, prepare_harness, run_harness
from .devices import DTYPES
from .loading import load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="moderngpt2 evaluate", description=__doc__.splitlines()[0])
    add_flag(parser, "--model", required=True, help="model directory (OUTPUT/final of `moderngpt2 train`)")
    add_flag(parser, "--input", nargs="+", default=None,
             help="a pretokenized directory or Megatron prefix, or text files/directories/`datasets` sources")
    add_flag(parser, "--split", default="validation", help="split of pretokenized data (default validation)")
    add_flag(parser, "--per-layer-data-path", default=None, help="explicit per-layer id streams of pretokenized data")
    add_flag(parser, "--text_field", default="text", help="field or column holding the text (default text)")
    add_flag(parser, "--on_bad_record", choices=("error", "skip"), default="error",
             help="malformed records in text input: stop (error, default) or skip them")
    add_flag(parser, "--block_size", type=int, default=None,
             help="tokens per block for text and Megatron input (default: the model's n_positions)")
    add_flag(parser, "--batch_size", type=int, default=8, help="blocks per forward pass (default 8)")
    add_flag(parser, "--max_blocks", type=int, default=None, help="evaluate at most this many blocks")
    add_flag(parser, "--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_flag(parser, "--dtype", default="auto", choices=("auto", *DTYPES), help="weights dtype (default auto)")
    add_flag(parser, "--output_json", default=None, help="also write the numbers to this JSON file")
    add_flag(parser, "--framework", choices=FRAMEWORKS, default="torch",
             help="implementation to run: torch (default), jax or tf (needs the extra of the same name)")
    add_harness_flags(parser)
    return parser


def is_pretokenized(inputs: list[str]) -> bool:
    if len(inputs) != 1:
        return False
    path = inputs[0]
    return os.path.isfile(os.path.join(path, "manifest.json")) or os.path.isfile(path + ".idx")


def pretokenized_blocks(args, tokenizer, block_size):
    """Blocks (dicts of LongTensors) of the chosen split, after checking the data matches the tokenizer."""
    from .data.loader import load_block_dataset
    from .training.data import checked_manifest

    path = args.input[0]
    if checked_manifest(path, tokenizer) is not None:
        # A directory keeps its own block size unless asked otherwise (Megatron storage can be re-cut).
        dataset = load_block_dataset(path, split=args.split, per_layer_path=args.per_layer_data_path,
                                     block_size=args.block_size)
    else:  # a bare Megatron prefix is one stream, cut here
        dataset = load_block_dataset(path, per_layer_path=args.per_layer_data_path, block_size=block_size)
    for index in range(len(dataset)):
        yield dataset[index]


def text_blocks(args, tokenizer, block_size):
    """Documents laid out as `pretokenize` does ([BOS] text EOS), cut into blocks (the last may be shorter)."""
    from .data.sources import iter_texts

    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos is None:
        raise UserError(f"{args.model}: the tokenizer has no EOS token to separate documents")
    prefix = [bos] if bos is not None and bos != eos else []
    buffer = []
    for text in iter_texts(args.input, text_field=args.text_field, on_bad_record=args.on_bad_record):
        buffer.extend(prefix + tokenizer(text, add_special_tokens=False)["input_ids"])
        buffer.append(eos)
        while len(buffer) >= block_size:
            yield {"input_ids": torch.tensor(buffer[:block_size])}
            del buffer[:block_size]
    if len(buffer) > 1:  # a block needs two tokens to predict one
        yield {"input_ids": torch.tensor(buffer)}


def batched(blocks, batch_size: int, max_blocks: int | None):
    """Stack consecutive blocks of equal length into batches."""
    pending = []
    for count, block in enumerate(blocks):
        if max_blocks is not None and count >= max_blocks:
            break
        if pending and (len(pending) == batch_size or pending[0]["input_ids"].shape != block["input_ids"].shape):
            yield pending
            pending = []
        pending.append(block)
    if pending:
        yield pending


def torch_batch_nll(model):
    """Summed NLL of one batch of blocks with the PyTorch model."""

    @torch.no_grad()
    def score(batch):
        inputs = {key: torch.stack([b[key] for b in batch]).to(model.device) for key in batch[0]}
        # num_items_in_batch=1 turns the model's loss into the sum over predicted tokens.
        output = model(**inputs, labels=inputs["input_ids"], num_items_in_batch=1, use_cache=False)
        return output.loss.float().item()

    return score


def framework_batch_nll(model, framework):
    """Summed NLL of one batch of blocks with a `--framework jax|tf` model (its `token_nll`)."""

    def score(batch):
        if "per_layer_input_ids" in batch[0]:
            raise UserError(f"--framework {framework} maps per-layer ids through the checkpoint's token map; this "
                            "data carries its own per-layer id streams, evaluate it with --framework torch")
        ids = torch.stack([b["input_ids"] for b in batch]).numpy()
        return float(model.token_nll(ids).astype("float64").sum())

    return score


def negative_log_likelihood(score_batch, batches) -> tuple[float, int, int]:
    """(summed NLL in nats, predicted tokens, blocks) over all batches; `score_batch` sums one batch's NLL."""
    total, tokens, blocks = 0.0, 0, 0
    for batch in tqdm(batches, desc="evaluating", unit="batch"):
        total += score_batch(batch)
        length = batch[0]["input_ids"].shape[0]
        tokens += len(batch) * (length - 1)
        blocks += len(batch)
    return total, tokens, blocks


def load_for_evaluation(args):
    """(scorer of one batch, n_positions, tokenizer) for the chosen framework."""
    if args.framework == "torch":
        model, tokenizer = load_checkpoint(args.model, args.device, args.dtype)
        return torch_batch_nll(model), model.config.n_positions, tokenizer
    from .tokenization import load_tokenizer

    check_torch_only_flags(args)
    model = load_causal_lm(args.framework, args.model)
    return framework_batch_nll(model, args.framework), model.config["n_positions"], load_tokenizer(args.model)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: must be at least 1")
    if (args.input is None) == (args.tasks is None):
        raise UserError("give either --input (perplexity on held-out text) or --tasks (lm-evaluation-harness)")
    if args.tasks is not None:
        if args.framework != "torch":
            raise UserError(f"--tasks runs the PyTorch model through lm-evaluation-harness; "
                            f"drop --framework {args.framework}")
        prepared = prepare_harness(args)
        model, tokenizer = load_checkpoint(args.model, args.device, args.dtype)
        run_harness(args, prepared, model, tokenizer)
        return 0
    score_batch, n_positions, tokenizer = load_for_evaluation(args)
    block_size = args.block_size or n_positions
    if block_size < 2:
        raise UserError(f"--block_size {block_size}: must be at least 2")
    blocks = (pretokenized_blocks if is_pretokenized(args.input) else text_blocks)(args, tokenizer, block_size)
    total, tokens, count = negative_log_likelihood(score_batch, batched(blocks, args.batch_size, args.max_blocks))
    if tokens == 0:
        raise UserError(f"{' '.join(args.input)}: no text to evaluate on")
    if count == 1 and tokens + 1 < block_size and not is_pretokenized(args.input):
        raise UserError(f"{' '.join(args.input)}: {tokens + 1} tokens, less than one block of {block_size}; give more "
                        "text or a smaller --block_size")
    loss = total / tokens
    result = {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "tokens": tokens, "blocks": count}
    print(f"perplexity {result['perplexity']:.4f} (loss {loss:.4f} nats/token over {tokens} tokens in {count} blocks)")
    if args.output_json:
        write_json(args.output_json, result)
    return 0
