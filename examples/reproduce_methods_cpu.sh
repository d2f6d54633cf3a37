#!/usr/bin/env bash
# CPU-scale evidence for the methods (README "Today's methods: SABR, CC-IBP, MTL-IBP", Evidence): IBP, SABR,
# CC-IBP and MTL-IBP on MNIST, each with the tactics off and both on, at eps_eval 0.3 (eps_train 0.4) and 0.1
# (eps_train 0.2), seeds 0-2, in the CPU-sized recipes (+experiment=mnist_quick, mnist_sabr, mnist_ccibp,
# mnist_mtlibp: cnn_4layer, 6 epochs) trained on all 60,000 training images (NUM_TRAIN: the first N only) and
# tested on all 10,000 test images. The coefficients are the papers' MNIST values (SABR lambda 0.6 / 0.4 at eps 0.3 / 0.1; CC-IBP alpha
# 0.3 / 0.1; MTL-IBP alpha 0.08 / 0.01); at eps 0.1 auto eps's maxoff is scaled with eps_train (0.15 * 0.2 / 0.4). Runs go JOBS at a time (one thread each), eps 0.3 first; then one table of all of them with
# the same-seed difference that the tactics make, per method and eps. Rerunning with the same OUT resumes.
# Usage: examples/reproduce_methods_cpu.sh [OUT [EXTRA_OVERRIDES...]]
#   env: PY (python), JOBS (default 2), SEEDS (default "0 1 2"), EPS (default "0.3 0.1"),
#        NUM_TRAIN (training images, default null: all 60,000), METHODS (default "ibp sabr ccibp mtlibp")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-multirun/methods_evidence_$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
JOBS=${JOBS:-2}
SEEDS=${SEEDS-0 1 2}
EPS=${EPS-0.3 0.1}
NUM_TRAIN=${NUM_TRAIN:-null}
METHODS=${METHODS-ibp sabr ccibp mtlibp}
EXTRA=("$@")
mkdir -p "$OUT"

experiment() {  # the CPU-sized recipe of a method
    case $1 in
        ibp) echo mnist_quick ;;
        sabr | ccibp | mtlibp) echo "mnist_$1" ;;
        *) echo "error: METHODS has '$1'; allowed: ibp sabr ccibp mtlibp" >&2; return 1 ;;
    esac
}
at_eps() {  # the overrides for an eval radius (the recipes' own is 0.3)
    case $1 in
        0.3) ;;
        0.1) echo "schedule.eps_train=0.2 schedule.eps_eval=0.1 autoeps.maxoff=0.075" ;;
        *) echo "error: EPS has '$1'; allowed: 0.3 0.1" >&2; return 1 ;;
    esac
}
for method in $METHODS; do experiment "$method" > /dev/null; done
for eps in $EPS; do at_eps "$eps" > /dev/null; done

# One line per run: a one-job multirun into the method's sweep directory (recipes are kept apart by directory, as
# +experiment is not part of run directory names), so the runs can go in any order and in parallel.
JOBLIST="$OUT/jobs.txt"
: > "$JOBLIST"
for eps in $EPS; do
    for seed in $SEEDS; do
        for method in $METHODS; do
            name=$(experiment "$method")
            overrides=$(at_eps "$eps")
            if [ "$eps" = 0.1 ]; then  # the papers' coefficients for MNIST 0.1
                case $method in
                    sabr) overrides="$overrides bound.lambda_start=0.4 bound.lambda_end=0.4" ;;
                    ccibp) overrides="$overrides bound.alpha_start=0.1 bound.alpha_end=0.1" ;;
                    mtlibp) overrides="$overrides bound.alpha_start=0.01 bound.alpha_end=0.01" ;;
                esac
            fi
            for tactics in "reweight=off autoeps=off" "reweight=on autoeps=on"; do
                # shellcheck disable=SC2086
                printf '%q ' "+experiment=$name" $tactics $overrides "data.num_train=$NUM_TRAIN" "seed=$seed" \
                    trainer.progress=false trainer.resume=true "hydra.sweep.dir=$OUT/$name" "${EXTRA[@]}" \
                    >> "$JOBLIST"
                echo >> "$JOBLIST"
            done
        done
    done
done

# shellcheck disable=SC2016
xargs -d '\n' -n 1 -P "$JOBS" bash -c \
    'eval "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \"\$0\" -m lirpa_reweight.train -m $1"' "$PY" < "$JOBLIST"

# One table: a row per method, eps and tactics; each "both on" row paired with its method's and eps's "off" row.
"$PY" -m lirpa_reweight.summarize "$OUT" --paired-to "reweight=off autoeps=off"
