#!/usr/bin/env bash
# CPU-scale reproduction of the paper's Table 4 (MNIST, eps_train 0.4, eps_eval 0.3) with the mnist_quick recipe:
# baseline / re-weight / auto eps / both x 5 seeds (20 runs, ~33 minutes on 2 CPU cores), then the table with
# same-seed differences to the baseline and the Figure 3 margin plot. Usage: examples/reproduce_mnist_cpu.sh [SWEEP_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SWEEP_DIR=${1:-multirun/mnist_quick/reproduce_$(date +%Y-%m-%d_%H-%M-%S)}

"$PY" -m lirpa_reweight.train +sweep=tactics 'hydra.sweeper.params.seed="0,1,2,3,4"' trainer.progress=false \
    hydra.sweep.dir="$SWEEP_DIR"
"$PY" -m lirpa_reweight.summarize "$SWEEP_DIR" --paired-to "reweight=off autoeps=off" --by-method
"$PY" -m lirpa_reweight.plot margins "$SWEEP_DIR/autoeps=off,reweight=off/seed=0" \
    "$SWEEP_DIR/autoeps=on,reweight=on/seed=0" --num-test 10000 --output "$SWEEP_DIR/margins.png"
