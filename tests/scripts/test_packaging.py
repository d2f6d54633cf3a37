"""The wheel ships conf/ inside the package, so `python -m lirpa_reweight.train --help` works from anywhere."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("lirpa_reweight-*.whl")
    return path


def test_wheel_contains_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lirpa_reweight/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)


def test_installed_wheel_runs_train_help_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    # The wheel first; the dependencies stay where this process found them (on the GPU machine a --target
    # install on PYTHONPATH, see docs/gpu.md).
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    code = "import lirpa_reweight, runpy, sys; print('FROM', lirpa_reweight.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=300)
    assert f"FROM {target}" in where.stdout, where.stdout + where.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "lirpa_reweight.train", "--help"], cwd=workdir,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # Hydra lists the config groups it found: proof that the packaged conf/ was read.
    for group in ("experiment", "model", "reweight", "autoeps", "schedule"):
        assert group in run.stdout, run.stdout
    assert "mnist_quick" in run.stdout


def test_the_wheel_declares_the_four_console_scripts_of_the_documented_commands(wheel):
    entry_points = next(name for name in zipfile.ZipFile(wheel).namelist() if name.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command, module in (("train", "train"), ("evaluate", "evaluate"), ("summarize", "summarize"),
                            ("plot", "plot")):
        assert f"lirpa-{command} = lirpa_reweight.{module}:main" in text, text


def test_the_console_scripts_run(tmp_path):
    bin_dir = Path(sys.executable).parent
    for command in ("lirpa-train", "lirpa-evaluate", "lirpa-summarize", "lirpa-plot"):
        script = bin_dir / command
        if not script.exists():
            pytest.skip(f"{command} is not installed beside {sys.executable} (pip install -e . puts it there)")
        run = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        help_text = (run.stdout + run.stderr).lower()
        assert run.returncode == 0 and ("usage" in help_text or "powered by hydra" in help_text), (command, help_text)
