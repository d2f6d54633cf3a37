#!/usr/bin/env bash
# The checks that need a CUDA device, in one go (CI has none; run this where a GPU is): the CUDA tests, the step
# benchmark on the GPU, mnist_quick trained on the GPU (compare with the CPU numbers in the README), one short
# training of each CIFAR method preset on CIFAR-shaped synthetic data (cnn_7layer, the presets' own batch, bound
# method, attack and regulariser; tactics on), and last the whole test suite with the GPU visible. Each step's
# output goes to OUT/<step>.log, a time limit per step; one line per step at the end.
# Usage: benchmarks/gpu_check.sh [OUT]
#   env: PY (python, default python3), MNIST_ROOT (a folder holding MNIST/raw; default: the package's cache),
#        SUITE_WORKERS (pytest-xdist workers for the suite, default 12; 0: no xdist), SKIP (step names to skip)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:-gpu_check_$(date +%Y-%m-%d_%H-%M-%S)}
SUITE_WORKERS=${SUITE_WORKERS:-12}
SKIP=${SKIP:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -n "${MNIST_ROOT:-}" ] && export LIRPA_REWEIGHT_DATA=$MNIST_ROOT
declare -a results

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $SKIP " in *" $name "*) results+=("$name: skipped"); return ;; esac
    echo "=== $name ($(date -u +%H:%M:%S)): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    results+=("$name: exit $rc$([ $rc = 124 ] && echo " (timed out at $limit s)"), $((SECONDS - start)) s")
}

step environment 60 bash -c "nvidia-smi -L; $PY -c 'import lirpa_reweight, torch, numpy, auto_LiRPA
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")
print(\"numpy\", numpy.__version__, \"auto_LiRPA\", getattr(auto_LiRPA, \"__version__\", \"?\"))
print(\"compat patches:\", lirpa_reweight.compat.apply())'"
step cuda_tests 180 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider
step benchmark 240 "$PY" benchmarks/benchmark_step.py --device cuda --recipe both --repeats 20 --markdown \
    --json "$OUT/benchmark.json"
step train_mnist_quick 300 "$PY" -m lirpa_reweight.train trainer.progress=false "hydra.run.dir=$OUT/mnist_quick"
for preset in cifar_sabr cifar_ccibp_2_255 cifar_mtlibp; do
    step "train_$preset" 180 "$PY" -m lirpa_reweight.train "+experiment=$preset" data=synthetic \
        "data.in_shape=[3,32,32]" data.num_train=2560 data.num_test=256 trainer.epochs=2 trainer.val_examples=256 \
        "schedule.eps_scheduler.opt_str='start=1,length=1,mid=0.25'" reweight=on autoeps=on trainer.progress=false \
        "hydra.run.dir=$OUT/$preset"
done
if [ "$SUITE_WORKERS" -gt 0 ]; then xdist=(-n "$SUITE_WORKERS"); else xdist=(); fi
step test_suite 420 "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}"

echo "=== summary"
printf '%s\n' "${results[@]}"
for run in "$OUT"/mnist_quick "$OUT"/cifar_*; do
    [ -f "$run/final.json" ] && "$PY" -c "import json, sys; f = json.load(open(sys.argv[1]))
print(sys.argv[1].rsplit('/', 1)[1], {k: f[k] for k in f if 'error' in k or k in ('verified_by', 'seconds')})" \
        "$run/final.json"
done
