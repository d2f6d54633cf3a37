#!/usr/bin/env bash
# The checks that need a CUDA device, in one go of about 7 minutes (CI has none; docs/gpu.md says how to run this on
# a borrowed GPU machine with the device kit). In order of value, each step stopped at its own limit and all of them
# within BUDGET_S: the environment (versions; the kit built from these sources), MNIST from the kit, the CUDA tests
# (pytest -m cuda), the step benchmark on the GPU, a clean vs an IBP epoch of cnn_7layer, mnist_quick trained on
# the GPU (beside the CPU numbers), a short run of each CIFAR method preset on CIFAR-shaped synthetic data, and
# last the whole test suite with the GPU visible (pytest-xdist where installed).
# Without CUDA (DEVICE=cpu, or none found) the same steps run on the CPU at toy sizes: a dry run of the script.
#
# Usage: benchmarks/gpu_check.sh [OUT]
#   OUT receives at most 6 files, none in a subfolder (what a device call brings back is limited):
#     summary.json    every step's status, seconds and key numbers; rewritten after each step, so a run cut short
#                     still tells how far it got
#     gpu_check.log   every step's output, as it ran
#     benchmark.json, epoch.json   the two benchmarks' results (benchmarks/benchmark_step.py --json)
#     suite.xml       the suite's JUnit report
#     runs.tar.gz     the training runs' folders (metrics, logs, final.json; checkpoints left out)
#   env: PY (python, default python3); DEVICE (auto: cuda if torch sees one, else cpu); BUDGET_S (all steps
#        together, default 390); SKIP (step names to leave out, e.g. SKIP="benchmark train_mnist_quick");
#        SUITE_WORKERS (pytest-xdist workers, default 12; 0: none); SUITE_ARGS (more pytest arguments, e.g. -x);
#        SUITE_LIMIT_S (the suite's own limit, default 600: in practice what is left of the budget);
#        LIMIT_SCALE (multiplies each step's own limit, default 1; a CPU dry run on a loaded machine may need 3);
#        MNIST_ROOT (a data root holding MNIST/raw; default: the kit's gzipped files, else the package's default);
#        KIT (the device kit folder, default .device-kit); WORK (scratch folder, default a new one under /tmp)
# Steps: environment data cuda_tests benchmark benchmark_epoch train_mnist_quick train_cifar_sabr
#        train_cifar_ccibp_2_255 train_cifar_mtlibp test_suite
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:-gpu_check_$(date +%Y-%m-%d_%H-%M-%S)}
KIT=${KIT:-.device-kit}
BUDGET_S=${BUDGET_S:-390}
LIMIT_SCALE=${LIMIT_SCALE:-1}
SUITE_WORKERS=${SUITE_WORKERS:-12}
SUITE_ARGS=${SUITE_ARGS:-}
SKIP=${SKIP:-}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK/runs" && WORK=$(cd "$WORK" && pwd)
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.json
: > "$LOG"
# Python would otherwise put the current folder (this checkout) first on sys.path, and the checkout's lirpa_reweight
# has no conf/ inside: the installed package must be the one imported (the kit's wheel, or an editable install).
export PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
export PY KIT WORK OUT

DEVICE=${DEVICE:-auto}
if [ "$DEVICE" = auto ]; then
    DEVICE=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2> /dev/null || echo cpu)
fi
QUICK=$([ "$DEVICE" = cuda ] && echo 0 || echo 1)  # no GPU: toy sizes, to check the script and its commands
if [ -n "${MNIST_ROOT:-}" ]; then
    export LIRPA_REWEIGHT_DATA=$MNIST_ROOT
elif ls "$KIT"/mnist/*.gz > /dev/null 2>&1; then
    export LIRPA_REWEIGHT_DATA=$WORK/data UNPACK_MNIST=1
fi

T0=$SECONDS
STEPS_JSON=()

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

write_summary() {  # FINISHED (true|false): the steps as bash knows them, then the numbers added by Python
    local IFS=,
    printf '{"device": %s, "quick": %s, "budget_s": %s, "elapsed_s": %s, "finished": %s, "work": %s, "steps": [%s]}\n' \
        "$(json_str "$DEVICE")" "$([ "$QUICK" = 1 ] && echo true || echo false)" "$BUDGET_S" "$((SECONDS - T0))" \
        "$1" "$(json_str "$WORK")" "${STEPS_JSON[*]}" > "$SUMMARY.tmp" && mv "$SUMMARY.tmp" "$SUMMARY"
    "$PY" - "$SUMMARY" "$WORK" "$OUT" >> "$LOG" 2>&1 <<'EOF' || echo "(summary details failed, see gpu_check.log)"
import json, re, sys
from pathlib import Path
summary_path, work, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
summary = json.loads(summary_path.read_text())
details = {}
env = work / "environment.json"
if env.is_file():
    details["environment"] = json.loads(env.read_text())
for step in summary["steps"]:
    log = work / f"{step['name']}.log"
    if step["name"] in ("cuda_tests", "test_suite") and log.is_file():
        lines = [l for l in log.read_text(errors="replace").splitlines()
                 if re.search(r"\b\d+ (passed|failed|skipped|errors?|deselected)\b", l) and re.search(r" in [\d.]+s", l)]
        if lines:  # pytest's closing line: "3 passed, 1 skipped in 4.2s"
            step["pytest"] = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|"
                                                             r"xfailed|xpassed)", lines[-1])}
CPU_MNIST_QUICK = {"clean_error": 0.0856, "pgd_error": 0.2106, "verified_error": 0.2343}  # README, 2 CPU threads
runs = {}
for final in sorted(work.glob("runs/*/final.json")):
    f = json.loads(final.read_text())
    run = {k: f.get(k) for k in ("clean_error", "pgd_error", "verified_error", "verified_error_by_method", "skipped",
                                 "epochs", "best_epoch")}
    if final.parent.name == "mnist_quick":
        run["cpu_reference"] = CPU_MNIST_QUICK
        run["minus_cpu_points"] = {k: round(100 * (f[k] - v), 2) for k, v in CPU_MNIST_QUICK.items()
                                   if isinstance(f.get(k), (int, float))}
    runs[final.parent.name] = run
if runs:
    details["runs"] = runs
bench = out / "benchmark.json"
if bench.is_file():
    details["benchmark"] = {
        f"{r['experiment']} {r['model']} batch {r['batch_size']} ({r['device']})":
            {row["variant"]: {"ms": round(row["median_ms"], 3), "x_plain": round(row["ratio_to_plain"], 3)}
             for row in r["rows"]}
        for r in json.loads(bench.read_text())}
epoch = out / "epoch.json"
if epoch.is_file():
    e = json.loads(epoch.read_text())[0]
    details["epoch"] = {k: e[k] for k in ("model", "batch_size", "batches", "device", "clean_epoch_s", "ibp_epoch_s",
                                          "ibp_over_clean", "ibp_over_clean_paired_median", "reference_ratio")}
summary["details"] = details
summary_path.with_suffix(".tmp").write_text(json.dumps(summary, indent=1))
summary_path.with_suffix(".tmp").replace(summary_path)
EOF
}

record() {  # NAME STATUS EXIT SECONDS LIMIT NOTE
    STEPS_JSON+=("{\"name\": $(json_str "$1"), \"status\": $(json_str "$2"), \"exit\": ${3:-null}, \"seconds\": $4, \"limit_s\": $5, \"note\": $(json_str "$6")}")
    echo "--- $1: $2${3:+ (exit $3)}, $4 s${6:+; $6}" | tee -a "$LOG"
    write_summary false
}

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$(($2 * LIMIT_SCALE))
    shift 2
    case " $SKIP " in *" $name "*) record "$name" skipped "" 0 0 "in SKIP"; return ;; esac
    local left=$((BUDGET_S - (SECONDS - T0)))
    if [ "$left" -lt 15 ]; then record "$name" skipped "" 0 0 "budget of $BUDGET_S s spent"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name ($(date -u +%H:%M:%S), limit $limit s): $*" | tee -a "$LOG"
    local start=$SECONDS rc status
    # SIGINT first: pytest then still prints its counts and writes its report.
    timeout -s INT -k 20 "$limit" "$@" < /dev/null 2>&1 | tee "$WORK/$name.log" >> "$LOG"
    rc=${PIPESTATUS[0]}
    tail -n 12 "$WORK/$name.log"
    case $rc in 0) status=passed ;; 124 | 137) status="timed out" ;; *) status=failed ;; esac
    record "$name" "$status" "$rc" $((SECONDS - start)) "$limit" ""
}

environment() {
    nvidia-smi -L 2>&1 || echo "nvidia-smi: not here"
    "$PY" - "$WORK/environment.json" "$KIT" "$(bash benchmarks/device_kit.sh --source-hash)" <<'EOF'
import importlib.util, json, sys
from pathlib import Path
import numpy, torch
import lirpa_reweight, lirpa_reweight._compat.patches as patches, auto_LiRPA, hydra
problems = []
cuda = torch.cuda.is_available()
info = dict(python=sys.version.split()[0], torch=torch.__version__, cuda=torch.version.cuda, cuda_available=cuda,
            gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0) if cuda else None,
            numpy=numpy.__version__, numpy_from=numpy.__file__, auto_LiRPA=getattr(auto_LiRPA, "__version__", "?"),
            hydra=hydra.__version__, lirpa_reweight_from=lirpa_reweight.__file__,
            compat_patches=patches.apply(), source_hash=sys.argv[3])
if importlib.util.find_spec("lirpa_reweight.conf") is None:
    problems.append("lirpa_reweight.conf is not importable: install the package (the kit's wheel, or pip install -e .)")
kit = Path(sys.argv[2]) / "kit.json"
if kit.is_file():
    k = json.loads(kit.read_text())
    info["kit"] = {key: k.get(key) for key in ("python", "commit", "built", "source_hash", "launchers")}
    if k.get("source_hash") != sys.argv[3]:
        problems.append(f"the kit's lirpa_reweight wheel was built from other sources ({k.get('source_hash')}, this "
                        f"tree {sys.argv[3]}): rebuild the kit (make device-kit)")
info["problems"] = problems
Path(sys.argv[1]).write_text(json.dumps(info, indent=1))
for key, value in info.items():
    print(f"{key}: {value}")
sys.exit(1 if problems else 0)
EOF
}

data() {
    if [ "${UNPACK_MNIST:-0}" = 1 ]; then
        mkdir -p "$LIRPA_REWEIGHT_DATA/MNIST/raw" || return 1
        for f in "$KIT"/mnist/*.gz; do
            gunzip -c "$f" > "$LIRPA_REWEIGHT_DATA/MNIST/raw/$(basename "$f" .gz)" || return 1
        done
    fi
    "$PY" -m lirpa_reweight.data check --dataset mnist
}
export -f environment data

echo "gpu_check: device $DEVICE$([ "$QUICK" = 1 ] && echo " (no CUDA: every step at toy size, a dry run)"), budget $BUDGET_S s," \
     "output in $OUT, scratch in $WORK" | tee -a "$LOG"
step environment 60 bash -c environment
step data 60 bash -c data
step cuda_tests 120 "$PY" -m pytest -m cuda -q -rA -p no:cacheprovider

if [ "$QUICK" = 1 ]; then
    bench=(--device cpu --batch-size 4 --repeats 2 --warmup 0 --input-size 8 --threads 1)
    epoch=(--device cpu --epoch-examples 16 --batch-size 4 --epoch-rounds 1 --input-size 8 --threads 1)
    mnist=(trainer.device=cpu trainer.epochs=1 data.num_train=400 data.num_test=200 trainer.val_examples=100
           "schedule.eps_scheduler.opt_str='start=1,length=1,mid=0.4'" "schedule.lr_scheduler.milestones=[1]")
    # 8 batches an epoch: the ramp's mid point must fall on a batch after the first
    cifar=(trainer.device=cpu "data.in_shape=[3,16,16]" data.num_train=128 data.num_test=32 trainer.val_examples=32
           trainer.batch_size=32 trainer.epochs=1)
else
    bench=(--device cuda --repeats 20)
    epoch=(--device cuda)
    mnist=(trainer.device=cuda)
    cifar=(trainer.device=cuda "data.in_shape=[3,32,32]" data.num_train=2560 data.num_test=256 trainer.val_examples=256
           trainer.epochs=2)
fi
# PYTHONSAFEPATH keeps the script's own folder off sys.path too: the benchmark imports its neighbour hostsync.py.
bench_env=(env "PYTHONPATH=$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}")
step benchmark 150 "${bench_env[@]}" "$PY" benchmarks/benchmark_step.py --recipe both --markdown "${bench[@]}" --json "$OUT/benchmark.json"
step benchmark_epoch 90 "${bench_env[@]}" "$PY" benchmarks/benchmark_step.py --epoch "${epoch[@]}" --json "$OUT/epoch.json"
step train_mnist_quick 200 "$PY" -m lirpa_reweight.train trainer.progress=false "${mnist[@]}" \
    "hydra.run.dir=$WORK/runs/mnist_quick"
# The presets' own batch, model, bound, attack and regulariser; both tactics on, maxoff about a third of eps_train
# (the CIFAR value 0.01 at 8/255; autoeps=on alone would bring MNIST's 0.15). A smoke run: the eps ramp starts at the
# first batch of an untrained cnn_7layer, whose IBP loss then jumps past the divergence stop's 10^4 x the first loss
# (seen on the CPU at toy size), so only a non-finite loss stops these runs (the losses are in metrics.jsonl).
for preset in cifar_sabr:0.01 cifar_ccibp_2_255:0.0025 cifar_mtlibp:0.01; do
    step "train_${preset%:*}" 90 "$PY" -m lirpa_reweight.train "+experiment=${preset%:*}" data=synthetic "${cifar[@]}" \
        "schedule.eps_scheduler.opt_str='start=1,length=1,mid=0.25'" reweight=on autoeps=on \
        "autoeps.maxoff=${preset#*:}" trainer.divergence_factor=null trainer.progress=false \
        "hydra.run.dir=$WORK/runs/${preset%:*}"
done
xdist=() threads=$(nproc)
if [ "$SUITE_WORKERS" -gt 0 ] && "$PY" -c "import xdist" 2> /dev/null; then
    xdist=(-n "$SUITE_WORKERS") threads=$(($(nproc) / SUITE_WORKERS > 0 ? $(nproc) / SUITE_WORKERS : 1))
fi
# shellcheck disable=SC2086  # SUITE_ARGS: words on purpose
step test_suite "${SUITE_LIMIT_S:-600}" env OMP_NUM_THREADS="$threads" "$PY" -m pytest -q -p no:cacheprovider -m "not cuda" "${xdist[@]}" --junitxml="$OUT/suite.xml" \
    $SUITE_ARGS

tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='*.pt' runs 2>> "$LOG" || echo "runs.tar.gz: tar failed" | tee -a "$LOG"
write_summary true
echo "=== summary ($((SECONDS - T0)) s; $OUT/summary.json)" | tee -a "$LOG"
"$PY" - "$SUMMARY" <<'EOF' | tee -a "$LOG"
import json, sys
s = json.load(open(sys.argv[1]))
for step in s["steps"]:
    print(f"{step['name']}: {step['status']}, {step['seconds']} s" + (f" {step['pytest']}" if "pytest" in step else ""))
d = s.get("details", {})
for name, run in d.get("runs", {}).items():
    print(name, {k: v for k, v in run.items() if k not in ("cpu_reference", "skipped")})
if "epoch" in d:
    e = d["epoch"]
    print(f"epoch: clean {e['clean_epoch_s']:.3f} s, IBP {e['ibp_epoch_s']:.3f} s: {e['ibp_over_clean']:.2f}x "
          f"(Shi et al. {e['reference_ratio']}x)")
EOF
