"""Perplexity of a checkpoint on held-out text (`moderngpt2 evaluate`).

The input is either pretokenized data (a `moderngpt2 pretokenize` directory, its validation split by default,
or a Megatron prefix) or raw text (JSON Lines, .txt, Parquet, `datasets` sources), tokenized here with the
checkpoint's tokenizer, joined with EOS and cut into blocks. Perplexity is exp of the mean negative
log-likelihood per predicted token over all blocks (token-weighted, not an average of per-block values).

    moderngpt2 evaluate --model out/final --input data/pretokenized
    moderngpt2 evaluate --model out/final --input heldout.jsonl --block_size 512
    moderngpt2 evaluate --model out/final --tasks hellaswag,arc_easy --limit 100   # lm-evaluation-harness
"""

import os

import torch
from tqdm.auto import tqdm

from .arguments import SourceArguments
from .errors import UserError
from .frameworks import check_torch_only_flags, load_causal_lm
from .loading import load_checkpoint
from .metrics import perplexity


def is_pretokenized(inputs: list[str]) -> bool:
    if len(inputs) != 1:
        return False
    path = inputs[0]
    return os.path.isfile(os.path.join(path, "manifest.json")) or os.path.isfile(path + ".idx")


def pretokenized_blocks(path: str, tokenizer, block_size: int, *, split: str, per_layer_data_path: str | None,
                        requested_block_size: int | None):
    """Blocks (dicts of LongTensors) of the chosen split, after checking the data matches the tokenizer."""
    from .data.loader import load_block_dataset
    from .training.data import checked_manifest

    if checked_manifest(path, tokenizer) is not None:
        # A directory keeps its own block size unless asked otherwise (Megatron storage can be re-cut).
        dataset = load_block_dataset(path, split=split, per_layer_path=per_layer_data_path,
                                     block_size=requested_block_size)
    else:  # a bare Megatron prefix is one stream, cut here
        dataset = load_block_dataset(path, per_layer_path=per_layer_data_path, block_size=block_size)
    for index in range(len(dataset)):
        yield dataset[index]


def text_blocks(source: SourceArguments, tokenizer, block_size: int, model_dir: str):
    """Documents laid out as `pretokenize` does ([BOS] text EOS), cut into blocks (the last may be shorter)."""
    from .data.sources import iter_texts

    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos is None:
        raise UserError(f"{model_dir}: the tokenizer has no EOS token to separate documents")
    prefix = [bos] if bos is not None and bos != eos else []
    buffer = []
    texts = iter_texts(source.source_specs(), text_field=source.text_field, on_bad_record=source.on_bad_record,
                       limit=source.max_input_lines_total, c4_dataset=source.c4_dataset, split=source.dataset_split)
    for text in texts:
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


def load_for_evaluation(model_dir: str, framework: str, device: str, dtype: str):
    """(scorer of one batch, n_positions, tokenizer) for the chosen framework."""
    if framework == "torch":
        model, tokenizer = load_checkpoint(model_dir, device, dtype)
        return torch_batch_nll(model), model.config.n_positions, tokenizer
    from .tokenization import load_tokenizer

    check_torch_only_flags(framework, device, dtype)
    model = load_causal_lm(framework, model_dir)
    return framework_batch_nll(model, framework), model.config["n_positions"], load_tokenizer(model_dir)


def evaluate_perplexity(model_dir: str, source: SourceArguments, *, split: str, per_layer_data_path: str | None,
                        block_size: int | None, batch_size: int, max_blocks: int | None, framework: str,
                        device: str, dtype: str) -> dict:
    """{perplexity, loss, tokens, blocks} of the checkpoint on pretokenized data or raw text.

    block_size None: the model's context for text and Megatron input, a directory's own block size otherwise.
    """
    score_batch, n_positions, tokenizer = load_for_evaluation(model_dir, framework, device, dtype)
    length = block_size or n_positions
    if length < 2:
        raise UserError(f"--block_size {length}: must be at least 2")
    inputs = source.source_specs()
    pretokenized = is_pretokenized(inputs)
    if pretokenized:
        blocks = pretokenized_blocks(inputs[0], tokenizer, length, split=split,
                                     per_layer_data_path=per_layer_data_path, requested_block_size=block_size)
    else:
        blocks = text_blocks(source, tokenizer, length, model_dir)
    total, tokens, count = negative_log_likelihood(score_batch, batched(blocks, batch_size, max_blocks))
    if tokens == 0:
        raise UserError(f"{' '.join(inputs)}: no text to evaluate on")
    if count == 1 and tokens + 1 < length and not pretokenized:
        raise UserError(f"{' '.join(inputs)}: {tokens + 1} tokens, less than one block of {length}; give more "
                        "text or a smaller --block_size")
    loss = total / tokens
    return {"perplexity": perplexity(loss), "loss": loss, "tokens": tokens, "blocks": count}
