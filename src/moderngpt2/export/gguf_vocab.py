"""Our tokenizers as GGUF vocabulary metadata, in the forms llama.cpp's own tokenizers reproduce.

- Byte-level BPE (GPT-2's regex pre-tokenizer, no prefix space) is llama.cpp's `gpt2` tokenizer model with
  the `gpt-2` pre-tokenizer: the byte-level token strings and the merges, in rank order.
- Unigram (Metaspace with no prepended piece, byte-fallback pieces) is llama.cpp's `t5` (unigram / Viterbi)
  model with its scores, `add_space_prefix` off and no whitespace folding.

Either way the vocabulary is padded to the model's embedding rows with unused tokens, as llama.cpp requires
one token per row. Which token is which (control, byte, unknown, unused) travels in `tokenizer.ggml.token_type`.
"""

import json
from dataclasses import dataclass, field

from ..errors import UserError

# gguf's TokenType values (kept here so this module does not need gguf to describe a vocabulary).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GGUFVocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    warnings: list[str] = field(default_factory=list)


def _is_gpt2_byte_level(pre_tokenizer) -> bool:
    return (pre_tokenizer or {}).get("type") == "ByteLevel" and pre_tokenizer.get("use_regex", True) \
        and not pre_tokenizer.get("add_prefix_space", False)


def _is_plain_metaspace(pre_tokenizer) -> bool:
    return (pre_tokenizer or {}).get("type") == "Metaspace" and pre_tokenizer.get("prepend_scheme") == "never"


def gguf_vocab(tokenizer, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a fast tokenizer for a model with `vocab_size` embedding rows."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre_tokenizer = backend["model"], backend.get("pre_tokenizer")
    if backend.get("normalizer") is not None:
        raise UserError("the tokenizer has a normalizer, which llama.cpp's gpt2/t5 tokenizers would not apply; "
                        "export --format gemma2 for engines that run the tokenizer itself")
    id_to_token = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(id_to_token) > vocab_size:
        raise UserError(f"the tokenizer has {len(id_to_token)} tokens but the model only {vocab_size} embedding rows")
    added = {entry["id"]: entry for entry in backend.get("added_tokens") or []}

    if model["type"] == "BPE" and _is_gpt2_byte_level(pre_tokenizer):
        merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
        vocab = GGUFVocab("gpt2", "gpt-2", [], [], merges=merges)
        base_type = NORMAL
    elif model["type"] == "Unigram" and _is_plain_metaspace(pre_tokenizer):
        vocab = GGUFVocab("t5", "default", [], [], scores=[])
        base_type = NORMAL
        if model.get("byte_fallback"):
            vocab.warnings.append("llama.cpp's unigram (t5) tokenizer has no byte fallback: a character missing "
                                  "from the vocabulary becomes the unknown token there instead of byte pieces")
    else:
        raise UserError(f"the tokenizer ({model['type']} with a {(pre_tokenizer or {}).get('type')} pre-tokenizer) "
                        "is neither of the kinds `moderngpt2 train-tokenizer` writes (byte-level BPE, unigram); "
                        "llama.cpp could not reproduce it")
    unigram_scores = {piece: score for piece, score in model.get("vocab", [])} if vocab.scores is not None else {}
    for index in range(vocab_size):
        token = id_to_token.get(index)
        if token is None:
            vocab.tokens.append(f"[PAD{index}]")
            vocab.types.append(UNUSED)
        else:
            vocab.tokens.append(token)
            vocab.types.append(_token_type(token, added.get(index), model, base_type))
        if vocab.scores is not None:
            vocab.scores.append(float(unigram_scores.get(token, 0.0)))
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            vocab.special_ids[role] = token_id
    return vocab


def _token_type(token: str, added_entry, model, base_type) -> int:
    if added_entry is not None:
        return CONTROL if added_entry.get("special") else USER_DEFINED
    if model["type"] == "Unigram":
        if model.get("unk_id") is not None and model["vocab"][model["unk_id"]][0] == token:
            return UNKNOWN
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return BYTE
    return base_type
