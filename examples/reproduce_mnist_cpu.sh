#!/usr/bin/env bash
# CPU-scale reproduction of the paper's Table 4 (MNIST, eps_train 0.4, eps_eval 0.3) with the mnist_quick recipe:
# baseline / re-weight / auto eps / both x 5 seeds (20 runs, ~33 minutes on 2 CPU cores), then the table with
# same-seed differences to the baseline and the Figure 3 margin plot.
# Usage: examples/reproduce_mnist_cpu.sh [SWEEP_DIR [EXTRA_OVERRIDES...]]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SWEEP_DIR=${1:-multirun/mnist_quick/reproduce_$(date +%Y-%m-%d_%H-%M-%S)}

"$PY" -m lirpa_reweight.train +sweep=tactics 'hydra.sweeper.params.seed="0,1,2,3,4"' trainer.progress=false \
    hydra.sweep.dir="$SWEEP_DIR" "${@:2}"
"$PY" -m lirpa_reweight.summarize "$SWEEP_DIR" --paired-to "reweight=off autoeps=off" --by-method
# The seed-0 runs of the baseline and of both tactics, found by their overrides (directory names may be shortened).
read -r BASELINE BOTH < <("$PY" - "$SWEEP_DIR" <<'PYTHON'
import sys
from pathlib import Path
from lirpa_reweight.reports.runs import find_run_dirs, run_setting

root = Path(sys.argv[1])
runs = {}
for run_dir in find_run_dirs(root):
    setting, seed = run_setting(run_dir, root)
    if seed == 0:
        runs[(setting.get("reweight"), setting.get("autoeps"))] = run_dir
print(runs[("off", "off")], runs[("on", "on")])
PYTHON
)
"$PY" -m lirpa_reweight.plot margins "$BASELINE" "$BOTH" --num-test 10000 --output "$SWEEP_DIR/margins.png"
