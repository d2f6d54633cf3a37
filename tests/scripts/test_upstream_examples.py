"""docs/upstream.md's edits, applied to upstream auto_LiRPA's own example scripts and run on synthetic data.

The edits are read from the page (each code block after an ``<!-- edit FILES; FUNCTION; WHERE; ANCHOR -->``
marker) and applied to the abstract syntax tree of ``examples/vision/{simple_training,cifar_training}.py`` of the
checkout ``$LIRPA_UPSTREAM_DIR`` points at; nothing of those files is stored here. Without the variable, or on an
auto_LiRPA without upstream's API (PyPI's 0.3: the scripts need it), the runs skip, saying why.
"""
import ast
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "upstream.md"
RUNNER = Path(__file__).with_name("upstream_runner.py")
SCRIPTS = ("simple_training.py", "cifar_training.py")
PLACEHOLDER = "UPSTREAM_STATEMENT"


# --- the page's edits -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edit:
    files: tuple
    function: str  # "<module>" for top-level code
    where: str  # top, before, after, around, loop-index
    kind: Optional[str]  # calls / assigns
    name: Optional[str]
    code: str


MARKER = re.compile(r"<!-- edit (?P<spec>.*?) -->\s*(?:```python\n(?P<code>.*?)```)?", re.S)


def page_edits() -> list:
    edits = []
    for match in MARKER.finditer(PAGE.read_text()):
        files, function, where, *anchor = (part.strip() for part in match["spec"].split(";"))
        kind, name = anchor[0].split() if anchor else (None, None)
        edits.append(Edit(tuple(files.split()), function, where, kind, name, match["code"] or ""))
    return edits


def _called_name(call: ast.Call) -> str:
    return getattr(call.func, "attr", getattr(call.func, "id", ""))


def _matches(statement: ast.stmt, kind: str, name: str) -> bool:
    if kind == "calls":
        return any(isinstance(node, ast.Call) and _called_name(node) == name for node in ast.walk(statement))
    targets = getattr(statement, "targets", None) or [getattr(statement, "target", None)]
    return any(isinstance(node, ast.Name) and node.id == name for t in targets if t is not None for node in ast.walk(t))


COMPOUND = (ast.If, ast.For, ast.While, ast.With, ast.Try)


def find_statement(body: list, kind: str, name: str):
    """``(block, position)`` of the first simple statement of ``body`` (nested blocks included, nested functions
    not) that calls or assigns ``name``; None if there is none."""
    for position, statement in enumerate(body):
        if isinstance(statement, COMPOUND):
            for block in (statement.body, getattr(statement, "orelse", []), getattr(statement, "finalbody", [])):
                found = find_statement(block, kind, name)
                if found:
                    return found
        elif not isinstance(statement, (ast.FunctionDef, ast.ClassDef)) and _matches(statement, kind, name):
            return body, position
    return None


def function_body(tree: ast.Module, function: str) -> list:
    if function == "<module>":
        return tree.body
    (found,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function]
    return found.body


def add_index_to_loop(body: list) -> None:
    """``for i, (data, labels) in enumerate(loader)`` -> ``for i, (data, labels, idx) in ...``."""
    loops = [node for statement in body for node in ast.walk(statement) if isinstance(node, ast.For)
             and isinstance(node.iter, ast.Call) and _called_name(node.iter) == "enumerate"]
    assert loops, "no loop over enumerate(...)"
    inner = loops[0].target.elts[1]
    assert isinstance(inner, ast.Tuple), ast.dump(loops[0].target)
    inner.elts.append(ast.Name("idx", ast.Store()))


def apply_edit(tree: ast.Module, edit: Edit) -> None:
    body = function_body(tree, edit.function)
    code = ast.parse(edit.code).body
    if edit.where == "top":
        tree.body[0:0] = code
        return
    if edit.where == "loop-index":
        add_index_to_loop(body)
        return
    found = find_statement(body, edit.kind, edit.name)
    assert found, f"{edit.function}: no statement {edit.kind} {edit.name}"
    block, position = found
    if edit.where == "before":
        block[position:position] = code
    elif edit.where == "after":
        block[position + 1:position + 1] = code
    else:  # around: the snippet, with the original statement where the placeholder stands
        original = block[position]
        for node in ast.walk(ast.Module(code, [])):
            for field in ("body", "orelse"):
                statements = getattr(node, field, None)
                if isinstance(statements, list):
                    statements[:] = [original if isinstance(s, ast.Expr) and getattr(s.value, "id", "") == PLACEHOLDER
                                     else s for s in statements]
        block[position:position + 1] = code


def edited_script(name: str, source: str) -> str:
    tree = ast.parse(source)
    for edit in page_edits():
        if name in edit.files:
            apply_edit(tree, edit)
    return ast.unparse(ast.fix_missing_locations(tree))


def test_the_page_names_an_edit_for_each_script_and_holds_a_code_block_where_one_is_needed():
    edits = page_edits()
    for script in SCRIPTS:
        assert sum(script in edit.files for edit in edits) >= 7
    for edit in edits:
        assert set(edit.files) <= set(SCRIPTS) and edit.where in ("top", "before", "after", "around", "loop-index")
        assert bool(edit.code) == (edit.where != "loop-index"), edit
        assert (edit.where == "around") == (PLACEHOLDER in edit.code), edit
        ast.parse(edit.code)


# --- running them ---------------------------------------------------------------------------------------------------

def upstream_dir() -> Optional[Path]:
    value = os.environ.get("LIRPA_UPSTREAM_DIR")
    return Path(value).expanduser() if value else None


def upstream_api_gap() -> Optional[str]:
    """Why upstream's example scripts cannot run on the installed auto_LiRPA, or None (checked by feature)."""
    import inspect

    import lirpa_reweight  # noqa: F401  (patches auto_LiRPA first)
    import auto_LiRPA.utils
    from auto_LiRPA.operators import BoundRelu

    if "activation_bound_option" not in inspect.getsource(sys.modules[BoundRelu.__module__]):
        return "this auto_LiRPA's ReLU does not read bound_opts['activation_bound_option'] (upstream 0.4+ API)"
    if not hasattr(auto_LiRPA.utils, "sync_params"):
        return "this auto_LiRPA has no auto_LiRPA.utils.sync_params (upstream 0.4+ API)"
    return None


def _skip_reason() -> Optional[str]:
    if upstream_dir() is None:
        return "set LIRPA_UPSTREAM_DIR to a checkout of upstream auto_LiRPA (its examples/vision/ scripts are used)"
    if not (upstream_dir() / "examples" / "vision" / "cifar_training.py").is_file():
        return f"LIRPA_UPSTREAM_DIR={upstream_dir()} has no examples/vision/cifar_training.py"
    return upstream_api_gap()


needs_upstream = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def prepared(name: str, tmp_path: Path) -> Path:
    """The checkout's examples/vision/ linked into ``tmp_path`` (models, data helpers) and the edited ``name``."""
    vision = upstream_dir() / "examples" / "vision"
    work = tmp_path / "vision"
    work.mkdir()
    for entry in vision.iterdir():
        if entry.name != name:
            (work / entry.name).symlink_to(entry)
    script = work / name
    script.write_text(edited_script(name, (vision / name).read_text()))
    return script


def run_script(script: Path, n_train: int, n_test: int, *args: str) -> dict:
    out_json = script.parent / "record.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(RUNNER), str(out_json), str(n_train), str(n_test), str(script), *args],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return json.loads(out_json.read_text())


def assert_tactics_active(record: dict, n_train: int, maxoff: float, gamma: float = 5.0, alpha: float = 0.1) -> None:
    """Offsets moved (within maxoff); the margins the hooks read differ between examples, and the weights are eq. 7
    of exactly those margins, so they differ with them (with gamma 0 every weight is 1 + alpha)."""
    scheduler = next(s for s in record["schedulers"] if s["num_examples"] == n_train)
    assert any(o > 0 for o in scheduler["offsets"]) and max(scheduler["offsets"]) <= maxoff + 1e-6
    assert record["weights"] and len(record["weights"]) == len(record["margins"])
    for weights, margins in zip(record["weights"], record["margins"]):
        assert weights == pytest.approx([math.exp(-gamma * abs(m)) + alpha for m in margins], rel=1e-5)
    assert max(max(m) - min(m) for m in record["margins"]) > 0.05  # in some batch, margins 0.05 or more apart
    assert max(max(w) - min(w) for w in record["weights"]) > 1e-3


def robust_ce_and_loss_pairs(events):
    """(robust CE the script computed, our loss) per training batch: the CE call right before each of ours."""
    return [(events[k - 1][1], value) for k, (kind, value) in enumerate(events)
            if kind == "reweighted" and k > 0 and events[k - 1][0] == "ce"]


MNIST_ARGS = ("--device", "cpu", "--data", "MNIST", "--model", "cnn_4layer", "--bound_type", "IBP",
              "--batch_size", "32", "--scheduler_name", "LinearScheduler", "--scheduler_opts", "start=1,length=1")
CIFAR_ARGS = ("--device", "cpu", "--model", "cnn_4layer", "--batch_size", "32", "--num_epochs", "3",
              "--scheduler_name", "LinearScheduler", "--scheduler_opts", "start=1,length=2")


@needs_upstream
def test_simple_training_with_gamma0_maxoff0_is_the_scripts_own_robust_ce(tmp_path):
    script = prepared("simple_training.py", tmp_path)
    record = run_script(script, 96, 32, *MNIST_ARGS, "--num_epochs", "1", "--eps", "0.1", "--gamma", "0",
                        "--maxoff", "0")
    pairs = robust_ce_and_loss_pairs(record["events"])
    assert len(pairs) == 2  # 3 training batches, the first at eps 0 (natural, no bounds)
    for robust_ce, loss in pairs:
        assert math.isclose(loss, robust_ce, rel_tol=1e-6, abs_tol=1e-7), (loss, robust_ce)
    assert not any(record["schedulers"][0]["offsets"])


@needs_upstream
def test_simple_training_with_the_hooks_moves_offsets_and_spreads_weights(tmp_path):
    script = prepared("simple_training.py", tmp_path)
    record = run_script(script, 96, 32, *MNIST_ARGS, "--num_epochs", "2", "--eps", "0.3", "--maxoff", "0.15")
    assert_tactics_active(record, 96, 0.15)
    train_radii = [e for r in record["radii"] if r["training"] for e in r["eps"]]
    assert min(train_radii) < max(r["eps_base"] for r in record["radii"]) - 1e-6  # some example trained below eps


# With --no_loss_fusion, upstream 0.7.1's cifar_training.py stops at the end of its first epoch, edited or not:
# its main calls sync_params(..., loss_fusion=True) on the unfused module. simple_training.py covers that path.
@needs_upstream
@pytest.mark.parametrize("bound_type", ["CROWN-IBP", "IBP"])
def test_cifar_training_with_loss_fusion_runs_both_hooks(tmp_path, bound_type):
    script = prepared("cifar_training.py", tmp_path)
    record = run_script(script, 64, 32, *CIFAR_ARGS, "--bound_type", bound_type, "--eps", "0.003", "--maxoff", "0.001")
    assert_tactics_active(record, 64, 0.001)
    # 3 epochs x 2 training batches, less the first (the ramp starts it at eps 0: natural training, no bounds)
    assert len(record["weights"]) == 3 * 2 - 1
