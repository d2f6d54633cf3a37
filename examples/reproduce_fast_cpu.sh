#!/usr/bin/env bash
# CPU-scale evidence for Shi et al. 2021's fast training (README "Fast certified training", Evidence): on MNIST at
# eps_train 0.4 / eps_eval 0.3, with the per-epoch IBP check on all 10,000 test images,
#   1. time to accuracy: mnist_quick vs mnist_fast_quick (its fast-training twin), seeds 0-2;
#   2. the tactics (off / re-weight / auto eps / both) on mnist_fast_quick, seeds 0-2;
#   3. each fast-training change alone on mnist_quick (BN model, IBP init, regularisers + grad clip), seeds 0-2;
#   4. the tactics sweep's seeds 3-4 (5 seeds in all);
# 32 runs, JOBS at a time (default 2, one thread each), in that order; then the two tables and the
# time-to-accuracy figure. Rerunning with the same OUT resumes (finished runs are skipped, unfinished ones continue).
# Usage: examples/reproduce_fast_cpu.sh [OUT [EXTRA_OVERRIDES...]]
#   env: PY (python), JOBS (parallel runs, default 2), VAL_EXAMPLES (default 10000), FIGURE (the figure's path),
#        SEEDS (steps 1-3, default "0 1 2"), MORE_SEEDS (step 4, default "3 4")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-multirun/fast_evidence_$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
JOBS=${JOBS:-2}
VAL_EXAMPLES=${VAL_EXAMPLES:-10000}
SEEDS=${SEEDS-0 1 2}
MORE_SEEDS=${MORE_SEEDS-3 4}
FIGURE=${FIGURE:-$OUT/time_to_accuracy_mnist.png}
QUICK="$OUT/mnist_quick"     # mnist_quick and each change alone
FAST="$OUT/mnist_fast_quick" # the tactics sweep on mnist_fast_quick
mkdir -p "$OUT"

# One line per run, in priority order: each is a one-job multirun into the sweep directory a Hydra sweep over the
# same overrides would use (same run directory names), so the runs can go in any order and in parallel.
JOBLIST="$OUT/jobs.txt"
: > "$JOBLIST"
job() {  # job SWEEP_DIR OVERRIDES...
    local dir=$1
    shift
    printf '%q ' "$@" trainer.progress=false trainer.resume=true "trainer.val_examples=$VAL_EXAMPLES" \
        "hydra.sweep.dir=$dir" "${EXTRA[@]}" >> "$JOBLIST"
    echo >> "$JOBLIST"
}
EXTRA=("$@")
quick() { job "$QUICK" +experiment=mnist_quick "$@"; }
fast() { job "$FAST" +experiment=mnist_fast_quick "$@"; }
for seed in $SEEDS; do                              # 1. time to accuracy
    quick model=cnn_4layer seed=$seed
    fast reweight=off autoeps=off seed=$seed
done
for seed in $SEEDS; do                              # 2. the tactics on the fast recipe
    fast reweight=on autoeps=off seed=$seed
    fast reweight=off autoeps=on seed=$seed
    fast reweight=on autoeps=on seed=$seed
done
for seed in $SEEDS; do                              # 3. each change alone
    quick model=cnn_4layer_bn seed=$seed
    quick model.init=ibp seed=$seed
    quick regularizer=shi trainer.grad_clip=10 seed=$seed
done
for seed in $MORE_SEEDS; do                         # 4. seeds 3-4 of the tactics sweep
    fast reweight=off autoeps=off seed=$seed
    fast reweight=on autoeps=off seed=$seed
    fast reweight=off autoeps=on seed=$seed
    fast reweight=on autoeps=on seed=$seed
done

# shellcheck disable=SC2016
xargs -d '\n' -n 1 -P "$JOBS" bash -c \
    'eval "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \"\$0\" -m lirpa_reweight.train -m $1"' "$PY" < "$JOBLIST"

"$PY" -m lirpa_reweight.summarize "$FAST" --paired-to "reweight=off autoeps=off"
"$PY" -m lirpa_reweight.summarize "$QUICK" --paired-to "model=cnn_4layer"
# Time to accuracy: mnist_quick's and mnist_fast_quick's finished runs with nothing else changed, found by their
# overrides (directory names may be shortened).
mapfile -t BASELINES < <("$PY" - "$QUICK" "$FAST" <<'PYTHON'
import sys
from pathlib import Path
from lirpa_reweight.reports.runs import find_run_dirs, run_setting

def runs(root, **wanted):
    root = Path(root)
    return [str(run_dir) for run_dir in find_run_dirs(root) if (run_dir / "final.json").is_file()
            and all(run_setting(run_dir, root)[0].get(key) == value for key, value in wanted.items())]

print("\n".join(runs(sys.argv[1], model="cnn_4layer") + runs(sys.argv[2], reweight="off", autoeps="off")))
PYTHON
)
"$PY" -m lirpa_reweight.plot time "${BASELINES[@]}" --label mnist_quick --label mnist_fast_quick --output "$FIGURE"

