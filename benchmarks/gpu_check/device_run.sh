#!/usr/bin/env bash
# Everything the GPU machine checks, in one call (see benchmarks/README.md, "On a GPU", for the exact
# `run` call): installs the carried wheels (.whl/, made by fetch_wheels.sh), then
#   1. python -m benchmarks gpu-check --equivalence --trainer   layout equivalence, and the trainer check
#      (train/evaluate/save/resume; full, LoRA, QLoRA)
#   2. python -m benchmarks loss-memory --device cuda            the loss alone: TRL's full logits against ours
#   3. python -m benchmarks train --device cuda --tunes full lora  the benchmark, both shapes, every peer
# Each step has its own time limit inside a total of DEADLINE_S (default 540) seconds, so a 600 s call
# returns with whatever was measured. Results go to $OUT (7 files: 3 json/md pairs and device_run.log).
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the output folder}"
DEADLINE_S=${DEADLINE_S:-540}
START=$(date +%s)
exec > >(tee -a "$OUT/device_run.log") 2>&1
left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
step() {  # step NAME MAX_SECONDS COMMAND...: run with min(MAX_SECONDS, time left - 5)
  local name=$1 cap=$2 budget
  shift 2
  budget=$(($(left) - 5))
  [ "$budget" -gt "$cap" ] && budget=$cap
  if [ "$budget" -lt 30 ]; then echo "=== $name: not run, ${budget}s left"; return; fi
  echo "=== $name (limit ${budget}s, $(left)s left): $*"
  timeout --signal=INT --kill-after=10 "$budget" "$@"
  echo "=== $name: exit $?, $(left)s left"
}

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
[ -f .assets/tokenizers/smollm2/tokenizer.json ] || { echo "carry .assets/tokenizers/smollm2 (make assets)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

step "gpu_check" 180 python3 -m benchmarks gpu-check --device cuda --equivalence --trainer --budget-s 150 --out "$OUT"
step "loss-memory" 60 python3 -m benchmarks loss-memory --device cuda --dtype bfloat16 --hidden 2048 --out "$OUT"
step "benchmark" 330 python3 -m benchmarks train --device cuda --tunes full lora --isolation inline --out "$OUT"
echo "done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
