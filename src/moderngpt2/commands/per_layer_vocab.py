"""`moderngpt2 per-layer-vocab`: choose a per-layer vocabulary from corpus statistics and write it as JSON."""

from ..arguments import SourceArguments, TokenizerArguments, parse_command
from ..data.per_layer_strategies import STRATEGIES
from ..data.per_layer_vocab import PerLayerVocabArguments, make_per_layer_vocab

DESCRIPTION = (f"Choose a per-layer vocabulary from corpus statistics (strategies: {', '.join(STRATEGIES)}) and "
               "write it as JSON; optionally write explicit per-layer id streams aligned with pretokenized data.")


def main(argv: list[str]) -> int:
    tokenizer, source, settings = parse_command(
        "moderngpt2 per-layer-vocab", [TokenizerArguments, SourceArguments, PerLayerVocabArguments], argv,
        description=DESCRIPTION)
    vocab, stream = make_per_layer_vocab(tokenizer, source, settings)
    own = (sum(1 for i in vocab.token_map if i != vocab.unk_id) if vocab.strategy != "identity"
           else min(vocab.per_layer_vocab_size, vocab.main_vocab_size))
    print(f"{vocab.strategy}: {own:,} of {vocab.main_vocab_size:,} main ids have their own per-layer id "
          f"(V_p = {vocab.per_layer_vocab_size:,})")
    print(f"coverage: {100 * vocab.coverage:.2f}% of {vocab.corpus_tokens:,} corpus tokens "
          f"({vocab.corpus_documents:,} documents)")
    print(f"wrote {settings.output_file}")
    if stream is not None:
        blocks = {split: entry["blocks"] for split, entry in stream["splits"].items()}
        print(f"wrote the per-layer stream to {settings.per_layer_output_prefix} ({blocks})")
    return 0
