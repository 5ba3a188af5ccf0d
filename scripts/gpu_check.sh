#!/usr/bin/env bash
# One GPU check of what the CPU CI cannot see: the CUDA tests, then the training and generation benchmarks of
# docs/performance.md against transformers' Gemma2 and Llama. Sized for about 9 minutes on one H100.
#
#   scripts/gpu_check.sh [OUTPUT_DIR]        (default: gpu-check-<UTC time>)
#
# Needs only this package installed (`pip install -e . --no-deps` on a machine that already has torch and
# transformers) and no network. Every part runs under its own time limit and prints as it goes; each benchmark
# rewrites its JSON after every model, so a part stopped by its limit still leaves what it finished. Output:
# OUTPUT_DIR/gpu_check.log, environment.json, one <part>.json per benchmark, <part>.xml per test run and
# <part>.status.json (exit status, seconds, timed out or not) per part.
#
# Environment:
#   GPU_CHECK_TINY=1          dry run on the CPU with tiny shapes (CI runs it, so the GPU run cannot die on a typo)
#   GPU_CHECK_PARTS="a b"     run only these parts (names below); default: all, in the order below
#   GPU_CHECK_TIME_SCALE=N    multiply every time limit by the integer N (default 1)
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TINY=${GPU_CHECK_TINY:-0}
SCALE=${GPU_CHECK_TIME_SCALE:-1}
PARTS=${GPU_CHECK_PARTS:-"tests-gpu train-small train-small-nosoftcap generate-small train-medium \
train-medium-nosoftcap tests-model"}
PYTHON=${PYTHON:-python}
START=$(date +%s)
FAILED=0

if [ "$TINY" = 1 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    DEVICE=(--device cpu)
    TRAIN_SMALL=(--size tiny --batch 2 --seq 32 --vocab-size 512 --per-layer-hidden-size 8 --per-layer-vocab-size 100)
    TRAIN_MEDIUM=("${TRAIN_SMALL[@]}")
    TRAIN_STEPS=(--steps 1 --warmup 1)
    GENERATE=(--size tiny --vocab-size 512 --batch 1,2 --prompt-len 8 --new-tokens 4 --repeats 1)
    MODEL_TESTS=(--collect-only)  # the CPU CI runs these files in full already
else
    DEVICE=()
    TRAIN_SMALL=(--size small --batch 16 --seq 1024)
    TRAIN_MEDIUM=(--size medium --batch 8 --seq 1024)
    TRAIN_STEPS=(--steps 10 --warmup 2)
    GENERATE=(--size small --batch 1,16 --repeats 2)
    MODEL_TESTS=()
fi

# part NAME LIMIT_SECONDS COMMAND...: run it under `timeout`, print it as it goes, and record how it ended.
part() {
    local name=$1 limit=$(($2 * SCALE)) began rc
    shift 2
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    echo
    echo "=== $name (limit ${limit}s, $(($(date +%s) - START))s into the check): $*"
    began=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "=== $name: exit status $rc after $(($(date +%s) - began))s$([ $rc = 124 ] && echo ', stopped by its limit')"
    [ $rc = 0 ] || FAILED=1
    "$PYTHON" - "$OUT/$name.status.json" "$name" "$rc" "$(($(date +%s) - began))" "$limit" "$*" <<'EOF'
import json, sys
path, name, rc, seconds, limit, command = sys.argv[1:]
status = {"part": name, "command": command, "exit_status": int(rc), "timed_out": rc == "124",
          "seconds": int(seconds), "limit_s": int(limit)}
with open(path, "w", encoding="utf-8") as handle:
    json.dump(status, handle, indent=2)
EOF
}

echo "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), output in $OUT, tiny dry run: $TINY"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,memory.total --format=csv
else
    echo "nvidia-smi: not found"
fi
"$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|triton|accelerate|moderngpt2) '
"$PYTHON" - "$OUT/environment.json" <<'EOF'
import json, platform, sys
from datetime import datetime, timezone

import torch
import transformers

cuda = torch.cuda.is_available()
environment = {
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
    "torch": torch.__version__, "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
    "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
    "device_count": torch.cuda.device_count() if cuda else 0,
}
print(json.dumps(environment))
with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump(environment, handle, indent=2)
EOF

# (a) correctness on CUDA first: every test marked gpu (skipped in the CPU CI)
# (the files never run on a GPU before come first, so a limit cuts the ones checked before; a test module whose
# import fails, for want of a package this machine lacks, must not stop the others)
GPU_TEST_FILES=(tests/test_model_softcap_op.py tests/test_model_loss.py tests/test_model_document_mask.py)
for file in $(grep -l "pytest.mark.gpu" tests/test_*.py); do
    case " ${GPU_TEST_FILES[*]} " in *" $file "*) ;; *) GPU_TEST_FILES+=("$file") ;; esac
done
part tests-gpu 80 "$PYTHON" -m pytest -v -m gpu "${GPU_TEST_FILES[@]}" --continue-on-collection-errors \
    -p no:cacheprovider --junitxml "$OUT/tests-gpu.xml"
# (b) and (c) the speed targets, softcaps on (all models, per-layer variant) and off (ours against Llama-sdpa).
# Models in order of what the targets need most, so a limit cuts the least useful one: Gemma2-eager is slower
# than Gemma2-flex in every anchor.
TRAIN_MODELS=ours,gemma2-flex,ours-ple,llama-sdpa,gemma2-eager
part train-small 140 moderngpt2 bench train "${TRAIN_SMALL[@]}" "${TRAIN_STEPS[@]}" --per-layer "${DEVICE[@]}" \
    --models "$TRAIN_MODELS" --json "$OUT/train-small.json"
part train-small-nosoftcap 45 moderngpt2 bench train "${TRAIN_SMALL[@]}" "${TRAIN_STEPS[@]}" --no-softcap \
    "${DEVICE[@]}" --models ours,llama-sdpa --json "$OUT/train-small-nosoftcap.json"
# (d) generation at batch 1 and 16, dynamic and static (compiled) caches
part generate-small 75 moderngpt2 bench generate "${GENERATE[@]}" "${DEVICE[@]}" --json "$OUT/generate-small.json"
part train-medium 120 moderngpt2 bench train "${TRAIN_MEDIUM[@]}" "${TRAIN_STEPS[@]}" --per-layer "${DEVICE[@]}" \
    --models "$TRAIN_MODELS" --json "$OUT/train-medium.json"
part train-medium-nosoftcap 45 moderngpt2 bench train "${TRAIN_MEDIUM[@]}" "${TRAIN_STEPS[@]}" --no-softcap \
    "${DEVICE[@]}" --models ours,llama-sdpa --json "$OUT/train-medium-nosoftcap.json"
# the model's backend and generation tests in full, on this machine's torch and transformers
part tests-model 25 "$PYTHON" -m pytest -q tests/test_model_backends.py tests/test_model_generation.py \
    "${MODEL_TESTS[@]}" --continue-on-collection-errors -p no:cacheprovider --junitxml "$OUT/tests-model.xml"

echo
echo "=== gpu_check done in $(($(date +%s) - START))s; every part succeeded: $([ $FAILED = 0 ] && echo yes || echo no)"
exit $FAILED
