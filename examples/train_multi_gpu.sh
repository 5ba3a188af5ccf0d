#!/usr/bin/env bash
# All GPUs of one node, with the engine of your choice:
#   ENGINE=ddp    torchrun, plain data parallelism
#   ENGINE=zero1  DeepSpeed ZeRO-1 (optimizer states sharded)   -- also zero2, zero3
#   ENGINE=fsdp2  PyTorch FSDP2 through accelerate
#   ENGINE=tp     tensor parallelism along the model's TP plan (transformers), one model split over the GPUs
#   ENGINE=autotp tensor parallelism along the same plan through DeepSpeed AutoTP (configs/ds_config_tp2.json: 2-way)
# DeepSpeed runs the Trainer's own AdamW (betas, eps, weight-decay groups): the JSON files only fill "auto" values.
set -euo pipefail
read -r -a EXTRA <<< "${EXTRA_FLAGS:-}"  # more `moderngpt2 train` flags; they win over the ones below

ENGINE=${ENGINE:-ddp}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
WORK=${WORK:-work}
OUT=${OUT:-runs/medium-$ENGINE}
HERE=$(cd "$(dirname "$0")/.." && pwd)

TRAIN=(train --model_size_name medium --tokenizer_path "$WORK/tokenizer" --pre_tokenized_dataset_path "$WORK/data"
       --output_dir "$OUT" --max_steps 50000 --per_device_train_batch_size 16 --gradient_accumulation_steps 2
       --bf16 --save_steps 1000 --eval_steps 1000 --max_eval_samples 2000 --dataloader_num_workers 4
       --resume_from_checkpoint auto)
TRAIN+=(${EXTRA[@]+"${EXTRA[@]}"})

case "$ENGINE" in
  ddp)        torchrun --standalone --nproc_per_node "$GPUS" -m moderngpt2.cli "${TRAIN[@]}" ;;
  zero1|zero2|zero3)
              torchrun --standalone --nproc_per_node "$GPUS" -m moderngpt2.cli "${TRAIN[@]}" \
                  --deepspeed "$HERE/configs/ds_config_${ENGINE}.json" ;;
  fsdp2)      accelerate launch --config_file "$HERE/configs/accelerate_fsdp2.yaml" --num_processes "$GPUS" \
                  -m moderngpt2.cli "${TRAIN[@]}" ;;
  tp)         torchrun --standalone --nproc_per_node "$GPUS" -m moderngpt2.cli "${TRAIN[@]}" --tp_size "$GPUS" ;;
  autotp)     torchrun --standalone --nproc_per_node 2 -m moderngpt2.cli "${TRAIN[@]}" \
                  --deepspeed "$HERE/configs/ds_config_tp2.json" ;;
  *)          echo "unknown ENGINE=$ENGINE (ddp, zero1, zero2, zero3, fsdp2, tp, autotp)" >&2; exit 2 ;;
esac
