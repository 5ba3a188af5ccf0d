"""Corpus statistics of main-tokenizer ids, and the strategies that choose a per-layer vocabulary from them.

Notation (all computed on the main tokenizer's ids over the corpus, documents separated by EOS):
``tf(t)`` occurrences of id t; ``df(t)`` documents containing t; ``N`` documents; ``ss(t)`` times t opens a
sentence (first token of a document, or the token right after a *sentence end*: a token whose text, with
trailing spaces removed, ends in ``. ! ? 。 ！ ？ …`` or that contains a newline).

Surface classes of a token, from its decoded text ``s`` (byte pieces of an unfinished UTF-8 character
contain U+FFFD and belong to no class): *word* if ``s`` has a letter or digit (Unicode L*, N*);
*punctuation* if ``s`` stripped is non-empty and all punctuation or symbols (P*, S*); *whitespace* if
``s`` is all whitespace; *cue* if punctuation, whitespace or containing a newline.

With ``V_p`` per-layer ids, ids 0-4 are reserved (``<|startoftext|>``, ``<|endoftext|>``,
``<|layer_start|>``, ``<|attention|>``, ``<unk>``), so ``K = V_p - 5`` main ids get their own per-layer id,
taken from the *candidates* (ids with ``tf > 0`` that are not special tokens of the main tokenizer) in
the strategy's rank order; ties are broken by higher ``tf``, then by lower id:

``frequency``           rank by ``tf``.
``syntax_focus``        rank by ``tf * df / N``: frequency weighted by document spread, so function words,
                        punctuation and whitespace (in nearly every document) lead and topical words sink.
``semantic_focus``      word tokens first, ranked by ``ln(1 + tf) * ln(N / df)`` (tf-idf: frequent but
                        document-specific content words; a token in every document scores 0); then the
                        other candidates by ``tf``.
``attention_guidance``  cue tokens first, ranked by ``tf``; then tokens with ``ss > 0`` ranked by ``ss``;
                        then the rest by ``tf``.
``random_subset``       ``K`` candidates drawn uniformly with ``random.Random(seed).sample`` from the sorted
                        candidates; per-layer ids follow the main ids' order.
``identity``            Gemma3n's map, the model's built-in default: main id ``t`` -> ``t`` if ``t < V_p``,
                        else 0 (reserved ids do not apply; ``unk_id`` is 0).
"""

import random
import unicodedata
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("syntax_focus", "semantic_focus", "attention_guidance", "random_subset", "identity", "frequency")
RESERVED = ("<|startoftext|>", "<|endoftext|>", "<|layer_start|>", "<|attention|>", "<unk>")
BOS_ID, EOS_ID, UNK_ID = 0, 1, 4
SENTENCE_ENDS = (".", "!", "?", "\u3002", "\uff01", "\uff1f", "\u2026")


# ----------------------------------------------------------------------------------------------- surfaces


@dataclass
class TokenClasses:
    word: np.ndarray  # bool per main id
    cue: np.ndarray
    sentence_end: np.ndarray


def classify_surfaces(surfaces: list[str]) -> TokenClasses:
    size = len(surfaces)
    word, cue, sentence_end = (np.zeros(size, dtype=bool) for _ in range(3))
    for i, s in enumerate(surfaces):
        if not s or "\ufffd" in s:
            continue
        categories = [unicodedata.category(ch) for ch in s]
        word[i] = any(c[0] in "LN" for c in categories)
        stripped = s.strip()
        punctuation = bool(stripped) and all(unicodedata.category(ch)[0] in "PS" for ch in stripped)
        cue[i] = punctuation or s.isspace() or "\n" in s
        sentence_end[i] = "\n" in s or s.rstrip().endswith(SENTENCE_ENDS)
    return TokenClasses(word, cue, sentence_end)


# ----------------------------------------------------------------------------------------------- statistics


class CorpusStats:
    """Counts over documents of main ids: tf, df, sentence starts, documents, tokens."""

    def __init__(self, vocab_size: int, sentence_end: np.ndarray):
        self.vocab_size = vocab_size
        self.sentence_end = sentence_end
        self.tf = np.zeros(vocab_size, dtype=np.int64)
        self.df = np.zeros(vocab_size, dtype=np.int64)
        self.ss = np.zeros(vocab_size, dtype=np.int64)
        self.documents = 0

    @property
    def tokens(self) -> int:
        return int(self.tf.sum())

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Count whole documents given back to back (``lengths`` tokens each)."""
        if not len(lengths):
            return
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError("token id outside the main vocabulary")
        self.tf += np.bincount(tokens, minlength=self.vocab_size)
        doc_ids = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        present = np.unique(doc_ids * self.vocab_size + tokens) % self.vocab_size
        self.df += np.bincount(present, minlength=self.vocab_size)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        opens = np.zeros(tokens.size, dtype=bool)
        opens[starts] = True
        after_end = np.zeros(tokens.size, dtype=bool)
        after_end[1:] = self.sentence_end[tokens[:-1]]
        opens |= after_end
        self.ss += np.bincount(tokens[opens], minlength=self.vocab_size)
        self.documents += len(lengths)


# ----------------------------------------------------------------------------------------------- strategies


def _rank(candidates: np.ndarray, primary: np.ndarray, tf: np.ndarray) -> np.ndarray:
    """Candidates by primary score descending, then tf descending, then id ascending."""
    order = np.lexsort((candidates, -tf[candidates], -primary[candidates]))
    return candidates[order]


def _tiered(candidates, tiers):
    """Concatenate rankings of successive tiers; ``tiers`` are (mask, score) in priority order."""
    taken = np.zeros(tiers[0][0].size, dtype=bool)
    ranked = []
    for mask, score, tf in tiers:
        members = candidates[mask[candidates] & ~taken[candidates]]
        ranked.append(_rank(members, score, tf))
        taken[members] = True
    return np.concatenate(ranked) if ranked else candidates


def rank_candidates(strategy: str, stats: CorpusStats, classes: TokenClasses, candidates: np.ndarray) -> np.ndarray:
    """The candidates in the order a ranking strategy gives them per-layer ids."""
    tf = stats.tf.astype(np.float64)
    everything = np.ones(stats.vocab_size, dtype=bool)
    if strategy == "frequency":
        return _rank(candidates, tf, tf)
    if strategy == "syntax_focus":
        return _rank(candidates, tf * stats.df / max(stats.documents, 1), tf)
    if strategy == "semantic_focus":
        df = np.maximum(stats.df, 1)
        tfidf = np.log1p(tf) * np.log(max(stats.documents, 1) / df)
        return _tiered(candidates, [(classes.word, tfidf, tf), (everything, tf, tf)])
    if strategy == "attention_guidance":
        return _tiered(candidates, [(classes.cue, tf, tf), (stats.ss > 0, stats.ss.astype(np.float64), tf),
                                    (everything, tf, tf)])
    raise ValueError(f"unknown strategy {strategy!r}")


@dataclass
class Selection:
    token_map: np.ndarray  # per-layer id for every main id
    own_id: np.ndarray  # bool per main id: has a per-layer id of its own
    chosen: np.ndarray  # main ids with their own id, in per-layer id order (identity: all ids < V_p)
    unk_id: int


def select(strategy: str, stats: CorpusStats, classes: TokenClasses, per_layer_vocab_size: int,
           special_ids: dict, seed: int = 0) -> Selection:
    """The main-id -> per-layer-id map of a strategy. ``special_ids``: main bos/eos ids and all special ids."""
    size = stats.vocab_size
    if strategy == "identity":
        ids = np.arange(size, dtype=np.int64)
        own = ids < per_layer_vocab_size
        return Selection(np.where(own, ids, 0), own, ids[own], unk_id=0)
    slots = per_layer_vocab_size - len(RESERVED)
    specials = np.zeros(size, dtype=bool)
    specials[list(special_ids["all"])] = True
    candidates = np.flatnonzero((stats.tf > 0) & ~specials)
    if strategy == "random_subset":
        pool = candidates.tolist()
        chosen = np.array(sorted(random.Random(seed).sample(pool, min(slots, len(pool)))), dtype=np.int64)
    else:
        chosen = rank_candidates(strategy, stats, classes, candidates)[:slots]
    token_map = np.full(size, UNK_ID, dtype=np.int64)
    token_map[chosen] = np.arange(len(RESERVED), len(RESERVED) + len(chosen))
    if special_ids.get("bos") is not None:
        token_map[special_ids["bos"]] = BOS_ID
    if special_ids.get("eos") is not None:
        token_map[special_ids["eos"]] = EOS_ID  # after bos: GPT-2 style tokenizers share one id for both
    own = token_map != UNK_ID
    return Selection(token_map, own, chosen, UNK_ID)


def coverage(selection: Selection, stats: CorpusStats) -> float:
    """Share of corpus tokens (separators included) whose id has its own per-layer id."""
    total = stats.tokens
    return float(stats.tf[selection.own_id].sum() / total) if total else 0.0
