#!/usr/bin/env bash
# CPU-scale evidence for loss fusion (docs/loss-fusion.md): CROWN-IBP on MNIST (+experiment=mnist_crownibp_quick:
# cnn_4layer, 6 epochs, eps_train 0.4, eps_eval 0.3) with loss fusion on and off, each with the tactics off and both
# on, seeds 0-2, trained on the first NUM_TRAIN training images (default null: all 60,000) and tested on all 10,000
# test images. Per seed the fused runs go first (they are the cheaper ones). Then one table of all of them with the
# same-seed difference that the tactics make, per fusion setting. Rerunning with the same OUT resumes.
# Usage: examples/reproduce_fusion_cpu.sh [OUT [EXTRA_OVERRIDES...]]
#   env: PY (python), JOBS (default 1), SEEDS (default "0 1 2"), NUM_TRAIN (default null), FUSION (default "true false")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-multirun/fusion_evidence_$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
JOBS=${JOBS:-1}
SEEDS=${SEEDS-0 1 2}
NUM_TRAIN=${NUM_TRAIN:-null}
FUSION=${FUSION-true false}
EXTRA=("$@")
for fusion in $FUSION; do
    case $fusion in true | false) ;; *) echo "error: FUSION has '$fusion'; allowed: true false" >&2; exit 1 ;; esac
done
mkdir -p "$OUT"

# One line per run: a one-job multirun into one sweep directory (fusion and tactics are in the run directory names).
JOBLIST="$OUT/jobs.txt"
: > "$JOBLIST"
for seed in $SEEDS; do
    for fusion in $FUSION; do
        for tactics in "reweight=off autoeps=off" "reweight=on autoeps=on"; do
            # shellcheck disable=SC2086
            printf '%q ' +experiment=mnist_crownibp_quick "bound.loss_fusion=$fusion" $tactics \
                "data.num_train=$NUM_TRAIN" "seed=$seed" trainer.progress=false trainer.resume=true \
                "hydra.sweep.dir=$OUT/mnist_crownibp_quick" "${EXTRA[@]}" >> "$JOBLIST"
            echo >> "$JOBLIST"
        done
    done
done

# shellcheck disable=SC2016
xargs -d '\n' -n 1 -P "$JOBS" bash -c \
    'eval "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \"\$0\" -m lirpa_reweight.train -m $1"' "$PY" < "$JOBLIST"

# One table: a row per fusion setting and tactics; each "both on" row paired with its fusion setting's "off" row.
"$PY" -m lirpa_reweight.summarize "$OUT" --paired-to "reweight=off autoeps=off"
