"""Docs that cannot drift: the README's and the quick start's Python snippets run, every `python -m
lirpa_reweight.train` / `evaluate` command of the README and docs/*.md composes and passes the config checks (each
job of a sweep), every relative link points at a file (and heading) that exists, and the API page documents every
public name. A renamed argument or key breaks a test here rather than a reader."""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from support import compose_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_SNIPPETS_OF = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def fenced_blocks(path: Path, language: str) -> list[tuple[str, str]]:
    """``(where, text)`` of each fenced block of ``language`` in ``path``; ``where`` is ``file:line``."""
    text = path.read_text()
    return [(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == language]


def blocks_of(paths, language):
    return [pytest.param(text, id=where) for path in paths for where, text in fenced_blocks(path, language)]


@pytest.mark.parametrize("code", blocks_of(RUN_SNIPPETS_OF, "python"))
def test_python_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a snippet that writes, writes here
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a bash block, continuation lines joined and comments dropped, as argument lists."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def commands_of(paths, module: str) -> list:
    """The arguments after ``-m lirpa_reweight.<module>`` of every such command in the bash blocks of ``paths``
    (``torchrun ... -m`` included), without ``-m``/``--multirun``; ``--help`` commands left out."""
    found = []
    for path in paths:
        for where, text in fenced_blocks(path, "bash"):
            for words in shell_commands(text):
                if f"lirpa_reweight.{module}" not in words or "--help" in words:
                    continue
                args = words[words.index(f"lirpa_reweight.{module}") + 1:]
                found.append(pytest.param([a for a in args if a not in ("-m", "--multirun")], id=where))
    return found


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """Jobs of a command line's sweep that between them try every swept value: all first values, then each other
    value of one swept key with the rest at their first (a grid's product would repeat the same checks)."""
    parser = OverridesParser.create()
    choices = [[job[0] for job in BasicSweeper.split_arguments([parser.parse_override(arg)], None)[0]]
               for arg in args]
    first = [values[0] for values in choices]
    return [first] + [first[:i] + [value] + first[i + 1:] for i, values in enumerate(choices) for value in values[1:]]


TRAIN_COMMANDS = commands_of(PAGES, "train")


def test_the_readme_and_quick_start_have_train_commands():
    where = {param.id.split(":")[0] for param in TRAIN_COMMANDS}
    assert {"README.md", "docs/quickstart.md"} <= where


@pytest.mark.parametrize("args", TRAIN_COMMANDS)
def test_train_command_composes_and_passes_the_config_checks(args, tmp_path, monkeypatch):
    import torch

    from lirpa_reweight.training.build import read_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # checked as on a machine with GPUs,
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)      # for the trainer.device=cuda commands

    for job in sweep_jobs(args):
        cfg = compose_config(job, hydra=True, run_dir=tmp_path)  # hydra=True: hydra.* and hydra/launcher=... too
        read_config(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]))  # as the command does


@pytest.mark.parametrize("args", commands_of(PAGES, "evaluate"))
def test_evaluate_command_composes_and_passes_the_config_checks(args):
    from lirpa_reweight.evaluate import check_config
    from lirpa_reweight.training.build import as_dict

    check_config(as_dict(compose_config(args, config_name="evaluate")))


def test_sweep_jobs_try_every_swept_value():
    assert sweep_jobs(["a=1,2", "b=3,4,5", "c=[6,7]"]) == [
        ["a=1", "b=3", "c=[6,7]"], ["a=2", "b=3", "c=[6,7]"], ["a=1", "b=4", "c=[6,7]"], ["a=1", "b=5", "c=[6,7]"]]


def test_a_bad_override_in_a_command_fails():
    """The check above can fail: a key that does not exist, and a value out of range."""
    from hydra.errors import ConfigCompositionException

    from lirpa_reweight.errors import ConfigError
    from lirpa_reweight.training.build import read_config

    with pytest.raises(ConfigCompositionException):
        compose_config(["reweight.gama=5"])
    with pytest.raises(ConfigError, match="reweight.gamma=-1"):
        read_config(compose_config(["reweight.gamma=-1"], run_dir="/tmp/unused"))


def slug(heading: str) -> str:
    """The anchor of a heading, as mkdocs' toc and GitHub make it."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text))


def without_fences(path: Path) -> str:
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)


def prose(path: Path) -> str:
    """``path`` without its fenced blocks, inline code and HTML comments (links there are not links)."""
    return re.sub(r"<!--.*?-->|`[^`\n]*`", "", without_fences(path), flags=re.S)


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", without_fences(path), re.M)}


def relative_links(path: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(path))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_what_exists(page):
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(ROOT) if ROOT in file.parents else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## The `a_b` (c)\n\n[a](missing.md) [b](#top) [c](#nowhere) `[d](ignored.md)`\n")
    assert relative_links(page) == ["missing.md", "#top", "#nowhere"]
    assert anchors(page) == {"top", "the-a_b-c"}


def test_the_api_page_documents_every_public_name():
    source = (ROOT / "lirpa_reweight" / "__init__.py").read_text()
    exports = ast.literal_eval(re.search(r"^_EXPORTS = (\{.*?^\})", source, re.M | re.S).group(1))
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name, module in exports.items() if f"::: lirpa_reweight.{module}.{name}\n" not in api]
    assert not missing, f"docs/api.md lacks ::: entries for {missing}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
