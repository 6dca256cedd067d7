#!/usr/bin/env bash
# One command on a lent single-GPU machine (issues 16 and 18), all of it within about 9 minutes:
#   - the GPU check (experiments/gpu_check.py) on the GPU and two CPU cores, with the fidelity study's supernet;
#   - meanwhile, the fidelity study's remaining stand-alone trainings on the other CPU cores, one process and one
#     thread each (the same CPU code path as the rest of its ground truth), resumed from runs/fidelity/results;
#   - after the check, a supernet of the default recipe on all 50,000 training images on the GPU, with as many
#     epochs as the check's measured training speed fits into the time left (item 3 of issue 16: longer training).
# Everything it writes goes under $OUT (the device tool brings it back). Carry runs/fmnist (the four Fashion-MNIST
# files) and runs/fidelity (the study's supernet and partial JSON). Run from the repository root:
#   OUT=runs/gpu_session bash experiments/gpu_session.sh
# GPU_SESSION_QUICK=1 shrinks every part to seconds (a dry run on a CPU machine).
set -u
OUT=${OUT:-runs/gpu_session}
PY=${PY:-python3}
DATA=runs/fmnist
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

if [ -n "${GPU_SESSION_QUICK:-}" ]; then
    fidelity_minutes=0.2; check_args=(--quick --device cpu); supernet_budget_s=20; finish_by_s=120
else
    fidelity_minutes=6.3; check_args=(); supernet_budget_s=0; finish_by_s=510
fi
cpus=$(nproc)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; echo "cpus: $cpus";
  $PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'; } > "$OUT/machine.txt"

pin() {  # pin() CPUS CMD...: run CMD on those cores where taskset exists
    local cores=$1; shift
    if command -v taskset > /dev/null && [ "$cpus" -gt 3 ]; then taskset -c "$cores" "$@"; else "$@"; fi
}

# 1. the fidelity study's ground truth on cores 2.. (cores 0 and 1 belong to the GPU check)
jobs=$(( cpus > 3 ? cpus - 2 : 1 ))
mkdir -p "$OUT/fidelity" && cp runs/fidelity/results/oneshot_fidelity_study.json "$OUT/fidelity/"
OMP_NUM_THREADS=1 pin "2-$((cpus - 1))" timeout $((finish_by_s - 10)) $PY experiments/oneshot_fidelity.py \
    --scale study --supernet runs/fidelity/supernet --data "$DATA" --out "$OUT/fidelity" --resume \
    --jobs "$jobs" --max-minutes "$fidelity_minutes" > "$OUT/fidelity.log" 2>&1 &
fidelity=$!

# 2. the GPU check on cores 0-1 and the GPU
pin 0,1 timeout 330 $PY experiments/gpu_check.py --data "$DATA" --supernet runs/fidelity/supernet \
    --out "$OUT/gpu_check.json" "${check_args[@]}" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $? at $(elapsed) s" >> "$OUT/timeline.txt"

# 3. a 50k-image supernet on the GPU, its epochs chosen from the check's measured training speed
left=$(( finish_by_s - $(elapsed) - 40 ))
[ "$supernet_budget_s" -gt 0 ] && left=$supernet_budget_s
epochs=$($PY - "$OUT/gpu_check.json" "$left" <<'EOF'
import json, sys
try:
    speed = json.load(open(sys.argv[1]))["training"]["device"]["images_per_s"]
except (OSError, KeyError, ValueError):
    speed = 0.0
# 0.7: each epoch also validates the largest and smallest candidates, and the first steps are slower
print(int(0.7 * float(sys.argv[2]) * speed // 50000))
EOF
)
[ -n "${GPU_SESSION_QUICK:-}" ] && epochs=1
echo "supernet: $epochs epochs in ${left} s at $(elapsed) s" >> "$OUT/timeline.txt"
if [ "$epochs" -ge 1 ]; then
    pin 0,1 timeout "$left" $PY -m automq.cli train-supernet spaces/mbv2_fmnist.yaml --out "$OUT/supernet_50k" \
        --epochs "$epochs" --subset 50000 --data "$DATA" ${GPU_SESSION_QUICK:+--device cpu --subset 512} \
        > "$OUT/supernet_50k.log" 2>&1
    echo "supernet exit $? at $(elapsed) s" >> "$OUT/timeline.txt"
fi
wait $fidelity
echo "fidelity exit $? at $(elapsed) s" >> "$OUT/timeline.txt"
rm -f "$OUT"/supernet_50k/checkpoint.pt.tmp* 2> /dev/null
