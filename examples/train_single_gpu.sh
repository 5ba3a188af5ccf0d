#!/usr/bin/env bash
# One GPU, end to end: tokenizer -> pretokenized blocks -> per-layer vocabulary -> train -> evaluate -> generate.
# Every path can be overridden from the environment, e.g. `INPUT=corpus.jsonl OUT=runs/small bash train_single_gpu.sh`.
set -euo pipefail
read -r -a EXTRA <<< "${EXTRA_FLAGS:-}"  # more `moderngpt2 train` flags; they win over the ones below

INPUT=${INPUT:?set INPUT to your training text (JSON Lines with a "text" field, .txt or .parquet)}
WORK=${WORK:-work}
OUT=${OUT:-runs/small}
SIZE=${SIZE:-small}

# a rerun keeps the tokenizer (train-tokenizer refuses to replace it: the data below was made with it)
[ -f "$WORK/tokenizer/tokenizer.json" ] ||
    moderngpt2 train-tokenizer --input "$INPUT" --output_path "$WORK/tokenizer" --vocab_size 32000
moderngpt2 pretokenize --input "$INPUT" --tokenizer_path "$WORK/tokenizer" --output_path "$WORK/data" \
    --block_size 1024 --validation_split_percentage 1 --num_proc 8
moderngpt2 per-layer-vocab --tokenizer_path "$WORK/tokenizer" --pre_tokenized_dataset_path "$WORK/data" \
    --per-layer-vocab-size 10000 --per-layer-strategy frequency --output "$WORK/per_layer_vocab.json"

moderngpt2 train \
    --model_size_name "$SIZE" \
    --tokenizer_path "$WORK/tokenizer" \
    --pre_tokenized_dataset_path "$WORK/data" \
    --use-per-layer-embedding --per-layer-vocab-file "$WORK/per_layer_vocab.json" --per-layer-hidden-size 256 \
    --output_dir "$OUT" \
    --max_steps 20000 --per_device_train_batch_size 16 --gradient_accumulation_steps 8 \
    --bf16 --save_steps 1000 --eval_steps 1000 --max_eval_samples 2000 --save_total_limit 3 \
    --dataloader_num_workers 4 \
    --resume_from_checkpoint auto ${EXTRA[@]+"${EXTRA[@]}"}

moderngpt2 evaluate --model "$OUT/final" --input "$WORK/data"
moderngpt2 generate --model "$OUT/final" --prompt "The history of" --max_new_tokens 80
