"""Training data: the pretokenized blocks, checked against the tokenizer, and batched.

Blocks are fixed-length, so a batch is a plain stack: `labels` are the inputs themselves (the model shifts
them) and no attention mask is needed. With `--document_mask` the batch also carries `document_ids`, so the
documents packed into one block (each closed by EOS) do not attend to each other.
"""

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from ..data.loader import check_tokenizer, load_block_dataset, read_manifest
from ..errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    train: Dataset
    eval: Dataset | None
    block_size: int
    collate: Callable[[list[dict]], dict]


def collate_blocks(features: list[dict], document_eos_id: int | None = None) -> dict:
    """Stack equal-length blocks; `labels` are `input_ids` (shifted inside the model). With `document_eos_id`,
    add the `document_ids` of the packed documents, each closed by that token."""
    batch = {key: torch.stack([f[key] for f in features]) for key in features[0]}
    batch["labels"] = batch["input_ids"].clone()
    if document_eos_id is not None:
        batch["document_ids"] = document_ids_from_eos(batch["input_ids"], document_eos_id)
    return batch


def document_ids_from_eos(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B, S) -> (B, S): the index of each position's document in its row. An EOS closes its document, so it
    belongs to the one before it: the id is the number of EOS tokens strictly before the position."""
    is_eos = (input_ids == eos_token_id).long()
    return is_eos.cumsum(-1) - is_eos


def block_collator(document_mask: bool, tokenizer) -> Callable[[list[dict]], dict]:
    if not document_mask:
        return collate_blocks
    if tokenizer.eos_token_id is None:
        raise UserError("--document_mask needs a tokenizer with an EOS token (documents are split at EOS)")
    return functools.partial(collate_blocks, document_eos_id=tokenizer.eos_token_id)


def checked_manifest(path: str, tokenizer) -> dict | None:
    """The manifest of a pretokenized directory after checking its tokenizer; None for a Megatron prefix."""
    if not os.path.isdir(path):
        return None
    manifest = read_manifest(path)
    check_tokenizer(manifest, tokenizer, path)
    if manifest.get("vocab_size") and manifest["vocab_size"] > len(tokenizer):
        raise UserError(f"{path}: the data's vocab_size {manifest['vocab_size']} exceeds the tokenizer's "
                        f"{len(tokenizer)}")
    return manifest


def _has_validation(manifest: dict | None) -> bool:
    return bool(manifest and manifest["splits"].get("validation", {}).get("blocks"))


def checked_blocks(dataset, tokenizer, verify: bool):
    """Blocks whose ids the tokenizer can have produced (checked as read; all at once with --verify_data)."""
    dataset.limit_token_ids(len(tokenizer))
    if verify:
        dataset.verify()
    return dataset


def load_eval_split(data_args, per_layer_path, tokenizer, manifest, block_size, eval_wanted) -> Dataset | None:
    """The held-out blocks: --eval_dataset_path, else the validation split of the training data."""
    path = data_args.pre_tokenized_dataset_path
    if data_args.eval_dataset_path:
        eval_path = data_args.eval_dataset_path
        eval_manifest = checked_manifest(eval_path, tokenizer)
        # A separate Megatron prefix is held-out text as a whole.
        split = "validation" if eval_manifest is not None else "train"
        dataset = load_block_dataset(eval_path, split=split, block_size=block_size)
    elif _has_validation(manifest) or (manifest is not None and eval_wanted):
        dataset = load_block_dataset(path, split="validation", per_layer_path=per_layer_path, block_size=block_size)
    elif eval_wanted:
        raise UserError(f"{path} is a single Megatron prefix with no held-out split: pass --eval_dataset_path "
                        "PREFIX, or turn evaluation off with --eval_strategy no")
    else:
        return None
    checked_blocks(dataset, tokenizer, data_args.verify_data)
    if data_args.max_eval_samples is not None:
        dataset = Subset(dataset, range(min(data_args.max_eval_samples, len(dataset))))
    return dataset


def load_training_data(data_args, per_layer_args, tokenizer, eval_wanted: bool) -> TrainingData:
    """The train split, the held-out split (None when there is none and none is wanted), and the block size."""
    path = data_args.pre_tokenized_dataset_path
    if not path:
        raise UserError("--pre_tokenized_dataset_path is required (run `moderngpt2 pretokenize` first)")
    manifest = checked_manifest(path, tokenizer)
    per_layer_path = per_layer_args.per_layer_data_path
    train = load_block_dataset(path, split="train", per_layer_path=per_layer_path, block_size=data_args.block_size)
    checked_blocks(train, tokenizer, data_args.verify_data)
    if len(train) == 0:
        raise UserError(f"{path}: the train split holds no complete block; use more text or a smaller --block_size")
    eval_dataset = load_eval_split(data_args, per_layer_path, tokenizer, manifest, train.block_size, eval_wanted)
    logger.info("data: %d training blocks, %s held-out blocks of %d tokens", len(train),
                len(eval_dataset) if eval_dataset is not None else "no", train.block_size)
    return TrainingData(train=train, eval=eval_dataset, block_size=train.block_size,
                        collate=block_collator(data_args.document_mask, tokenizer))
