#!/usr/bin/env bash
# Several nodes under PBS Pro / OpenPBS: one torchrun per node (started with pbsdsh), rendezvous on the first.
# From the repository root: `qsub -l select=2:ngpus=8 -v ENGINE=zero1 examples/train_multi_node_pbs.sh`
# (ENGINE=ddp|zero1|zero2|zero3, see train_multi_gpu.sh; the repository must sit on a filesystem every node sees).
#PBS -N moderngpt2
#PBS -l select=2:ngpus=8
#PBS -l walltime=48:00:00
#PBS -j oe
set -euo pipefail
read -r -a EXTRA <<< "${EXTRA_FLAGS:-}"  # more `moderngpt2 train` flags; they win over the ones below
cd "${PBS_O_WORKDIR:-$(pwd)}"

if [ -z "${MODERNGPT2_NODE_RANK:-}" ]; then
  # The launching shell: start this same script once per node, telling each node its rank.
  mapfile -t NODES < <(sort -u "$PBS_NODEFILE")
  export MASTER_ADDR=${NODES[0]} MASTER_PORT=${MASTER_PORT:-29500} NNODES=${#NODES[@]}
  for rank in "${!NODES[@]}"; do
    pbsdsh -h "${NODES[$rank]}" -- env MODERNGPT2_NODE_RANK="$rank" MASTER_ADDR="$MASTER_ADDR" \
        MASTER_PORT="$MASTER_PORT" NNODES="$NNODES" ENGINE="${ENGINE:-zero1}" EXTRA_FLAGS="${EXTRA_FLAGS:-}" \
        PBS_O_WORKDIR="$PWD" PATH="$PATH" bash "$PWD/examples/train_multi_node_pbs.sh" &
  done
  wait
  exit 0
fi

ENGINE=${ENGINE:-zero1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
WORK=${WORK:-work}
OUT=${OUT:-runs/large-$ENGINE}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

ENGINE_FLAGS=()
case "$ENGINE" in
  ddp) ;;
  zero1|zero2|zero3) ENGINE_FLAGS=(--deepspeed "$PWD/configs/ds_config_${ENGINE}.json") ;;
  *) echo "unknown ENGINE=$ENGINE" >&2; exit 2 ;;
esac

torchrun --nnodes "$NNODES" --node_rank "$MODERNGPT2_NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m moderngpt2.cli train \
    --model_size_name large --tokenizer_path "$WORK/tokenizer" --pre_tokenized_dataset_path "$WORK/data" \
    --output_dir "$OUT" --max_steps 100000 --per_device_train_batch_size 16 --gradient_accumulation_steps 1 \
    --bf16 --save_steps 1000 --eval_steps 1000 --max_eval_samples 4000 --save_total_limit 3 \
    --dataloader_num_workers 4 --resume_from_checkpoint auto ${ENGINE_FLAGS[@]+"${ENGINE_FLAGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
