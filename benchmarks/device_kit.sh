#!/usr/bin/env bash
# The device kit: everything a GPU machine without network needs beyond what it already has (docs/gpu.md), in one
# ignored folder that the device run carries: the wheels (this package's too, built from the working tree) and the
# MNIST idx files, gzipped. Checks that the working tree plus the kit fit the 64 MiB a device call carries, and
# prints the one command to run there.
#
# Usage: benchmarks/device_kit.sh [KIT]            build the kit (default .device-kit; needs PyPI)
#        benchmarks/device_kit.sh --check-size [KIT]   only the size check (no network)
#        benchmarks/device_kit.sh --command [KIT]      only print the device command
#        benchmarks/device_kit.sh --source-hash        hash of the package's sources (gpu_check.sh compares it with
#                                                      the kit's, to catch a kit built from another tree)
#   env: KIT_PYTHON    the device's Python, MAJOR.MINOR (default 3.12); 3.11 for a dry run with this machine's torch
#        PY            a python that can import torchvision, to verify (and if need be fetch) MNIST (default python3)
#        MNIST_ROOT    data root holding MNIST/raw (default $LIRPA_REWEIGHT_DATA, else ~/.cache/lirpa_reweight/data)
#        LAUNCHERS     1 (default): also the `test`/`launchers` extras' Hydra plugins and Optuna; 0: leave them out
#                      (their tests then skip)
#        LIMIT_MIB     what one device call carries (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=build
case "${1:-}" in --check-size | --command | --source-hash) MODE=${1#--}; shift ;; esac
KIT=${1:-.device-kit}
KIT=${KIT%/}
KIT_PYTHON=${KIT_PYTHON:-3.12}
PY=${PY:-python3}
LAUNCHERS=${LAUNCHERS:-1}
LIMIT_MIB=${LIMIT_MIB:-64}

# Versions as in the CPU venv that runs the suite (torch 2.14.1 + auto-lirpa 0.3); exactly one of each. The GPU
# machine already has torch, torchvision, matplotlib, tensorboard, tqdm, pyyaml, packaging, pytest, pytest-xdist,
# scipy, joblib, cloudpickle, rich, Mako's MarkupSafe, ... (DEVICE_HAS below), so those do not travel.
# numpy: the machine's numpy 2 serves (auto-lirpa 0.3's one numpy 2 gap, numpy.lib.arraysetops, is patched by
# lirpa_reweight._compat), so none travels.
RUNTIME=(
    hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
    auto-lirpa==0.3 appdirs==1.4.4 graphviz==0.21
)
OPTIONAL=(
    hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 submitit==1.5.4
    hydra-optuna-sweeper==1.3.0 optuna==2.10.1 alembic==1.13.3 Mako==1.4.3 SQLAlchemy==1.4.54 greenlet==3.5.6
    cmaes==0.13.1 colorlog==6.12.0 cliff==4.17.0 autopage==0.6.0 cmd2==4.3.1 prompt-toolkit==3.0.53 pyperclip==1.11.0
    rich-argparse==1.8.0 PrettyTable==3.18.0 wcwidth==0.9.4 stevedore==5.10.0
)
# The GPU machine's own Python packages (its image 'cuda', as read 2026-11-17), for the check that every wheel's
# requirements are met there.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub
humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping
jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)
MNIST_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

die() { echo "device_kit: $*" >&2; exit 1; }

source_hash() {  # the package's sources as the device's copy of the tree has them (no git there)
    find lirpa_reweight conf setup.cfg setup.py -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.cfg' \) \
        -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

device_command() {  # the whole device call, one line (the device tool takes at most 2000 characters)
    echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $KIT/*.whl" \
         "&& export PYTHONPATH=/tmp/site && bash benchmarks/gpu_check.sh \$OUT/gc"
}

check_size() {  # what travels: tracked + untracked-not-ignored files (git ls-files) + the kit folder
    git rev-parse --git-dir > /dev/null 2>&1 || die "not a git checkout: cannot tell what travels to the device"
    [ -d "$KIT" ] || die "no kit folder $KIT (run benchmarks/device_kit.sh first)"
    local tree kit limit
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2> /dev/null |
        awk '{s += $1} END {print s + 0}')
    kit=$(find "$KIT" -type f -print0 | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
    limit=$((LIMIT_MIB * 1024 * 1024))
    local total=$((tree + kit))
    awk -v t="$tree" -v k="$kit" -v s="$total" -v l="$limit" 'BEGIN {
        printf "size: working tree %.1f MiB + kit %.1f MiB = %.1f MiB of %.0f MiB\n", t / 2^20, k / 2^20, s / 2^20, l / 2^20 }'
    if [ "$total" -gt "$limit" ]; then
        die "over the device's limit by $(((total - limit) / 1024)) KiB: carry less (LAUNCHERS=0), or shrink the tree"
    fi
}

case $MODE in
    source-hash) source_hash; exit 0 ;;
    command) device_command; exit 0 ;;
    check-size) check_size; exit 0 ;;
esac

# ----------------------------------------------------------------------------- build
git rev-parse --git-dir > /dev/null 2>&1 || die "run this in a git checkout of lirpa_reweight"
case $KIT in "" | . | /* | *..*) die "the kit folder must be a path inside the checkout, got '$KIT'" ;; esac
mkdir -p "$KIT"  # git tells a folder pattern (/.device-kit*/) only for a folder that exists
git check-ignore -q "$KIT" || die "$KIT is not ignored by git: add /$KIT/ to .gitignore (the device run carries it)"
specs=("${RUNTIME[@]}")
[ "$LAUNCHERS" = 1 ] && specs+=("${OPTIONAL[@]}")
rm -rf "$KIT"
mkdir -p "$KIT/mnist"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done

echo "device_kit: wheels for CPython $KIT_PYTHON, manylinux x86_64, into $KIT/"
for spec in "${specs[@]}"; do
    if python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$KIT_PYTHON" --implementation cp \
        "${platform_args[@]}" -d "$KIT" "$spec" > "$scratch/pip.log" 2>&1; then
        continue
    fi
    # No wheel on the registry (auto-lirpa 0.3 and antlr4-python3-runtime 4.9.3 are sdists): build one here; it
    # must come out pure Python, or it would not run on the device's interpreter.
    python3 -m pip wheel -q --no-deps -w "$scratch/built" "$spec" > "$scratch/pip.log" 2>&1 ||
        { cat "$scratch/pip.log" >&2; die "neither a wheel nor an sdist that builds for $spec"; }
    for w in "$scratch"/built/*.whl; do
        case $w in *-none-any.whl) mv "$w" "$KIT/" ;; *) die "$spec built as $(basename "$w"), not pure Python" ;; esac
    done
done

# This package, from exactly the files that travel (a clean copy: no stale build/ left in the checkout).
mkdir -p "$scratch/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 -r sh -c \
    'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh | tar -c --null -T - | tar -x -C "$scratch/src"
python3 -m pip wheel -q --no-deps -w "$KIT" "$scratch/src" > "$scratch/pip.log" 2>&1 ||
    { cat "$scratch/pip.log" >&2; die "building the lirpa_reweight wheel failed"; }

# Exactly one version of each distribution (two would stop the device's install).
dupes=$(for w in "$KIT"/*.whl; do basename "$w" | cut -d- -f1 | tr 'A-Z.-' 'a-z__'; done | sort | uniq -d)
[ -z "$dupes" ] || die "more than one wheel of: $dupes"

# Every requirement of every wheel is in the kit or on the device (for the device's Python and platform).
python3 - "$KIT" "$KIT_PYTHON" "$DEVICE_HAS" <<'EOF' || die "a requirement would be missing on the device"
import re, sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
kit, pyver, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(n) for n in device}
wheels = sorted(kit.glob("*.whl"))
have |= {norm(w.name.split("-")[0]) for w in wheels}
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if norm(req.name) not in have:
                missing.append(f"{w.name}: {req}")
# auto-lirpa 0.3's metadata asks for its test tools and torch<1.13 (installed with --no-deps on purpose).
missing = [m for m in missing if not re.match(r"auto_LiRPA-.*: (pylint|pytest-order)", m)]
if missing:
    print("missing on the device:\n  " + "\n  ".join(missing), file=sys.stderr)
    sys.exit(1)
print(f"device_kit: {len(wheels)} wheels; every requirement is in the kit or on the device")
EOF

# MNIST: the device has no network; the four idx files, verified here, travel gzipped (~11 MiB).
data_root=${MNIST_ROOT:-${LIRPA_REWEIGHT_DATA:-$HOME/.cache/lirpa_reweight/data}}
if ! "$PY" -m lirpa_reweight.data check --dataset mnist --root "$data_root" > "$scratch/data.log" 2>&1; then
    "$PY" -m lirpa_reweight.data fetch-mnist --root "$data_root" > "$scratch/data.log" 2>&1 ||
        { cat "$scratch/data.log" >&2; die "no verified MNIST in $data_root (make data, or set MNIST_ROOT)"; }
fi
for f in "${MNIST_FILES[@]}"; do gzip -9 -n -c "$data_root/MNIST/raw/$f" > "$KIT/mnist/$f.gz"; done

cat > "$KIT/kit.json" <<EOF
{"python": "$KIT_PYTHON", "launchers": $([ "$LAUNCHERS" = 1 ] && echo true || echo false),
 "source_hash": "$(source_hash)", "commit": "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- 2> /dev/null || echo "+changes")",
 "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "wheels": [$(for w in "$KIT"/*.whl; do printf '"%s", ' "$(basename "$w")"; done | sed 's/, $//')]}
EOF

check_size
echo "device_kit: ready. The device call: run(command=<below>, carry=[\"$KIT\"], timeout_s=540)"
device_command
