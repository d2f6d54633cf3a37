"""The figures of finished runs (the ``plot`` command draws them): the paper's Figure 3 of eq. 6 margins, the
training curves, the per-example training radii, and time to accuracy. Each reads run directories only (and, for
margins, the run's checkpoint and test set)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and none is touched

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# torch, the checkpoint reader and the bounds are imported where a plot needs them: `training` reads JSON only.
from ..errors import ExpectedFailure  # noqa: E402
from ..training import rundir  # noqa: E402
from .runs import find_run_dirs, read_config, run_setting, setting_label  # noqa: E402

KINDS = ("margins", "training", "eps", "time")


class NotARunError(ExpectedFailure, ValueError):
    """A directory lacks the file a plot needs; the message names the directory and the file."""


# --- reading a run ---------------------------------------------------------------------------------------------

def _need_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir} is not a directory; expected a run directory written by lirpa_reweight.train")
    return run_dir


def read_metrics(run_dir) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``, in epoch order (read by the run directory's one reader)."""
    path = _need_dir(run_dir) / rundir.METRICS
    if not path.is_file():
        raise NotARunError(f"{run_dir} is not a training run: expected {path.name} (per-epoch metrics written by "
                           "lirpa_reweight.train)")
    records = rundir.read_metrics(path)
    if not records:
        raise NotARunError(f"{path} holds no epoch yet: the run has not finished an epoch")
    return sorted(records, key=lambda record: record["epoch"])


def run_checkpoint(run_dir, prefer: Sequence[str] = (rundir.BEST, rundir.LAST)) -> Path:
    """The first of ``prefer`` that exists in ``run_dir``."""
    run_dir = _need_dir(run_dir)
    for name in prefer:
        if (run_dir / name).is_file():
            return run_dir / name
    raise NotARunError(f"{run_dir} is not a training run with a checkpoint: expected {' or '.join(prefer)}")


def run_label(run_dir) -> str:
    """A label: the run's setting (overrides other than the seed), and its seed."""
    setting, seed = run_setting(Path(run_dir))
    return setting_label(setting) + (f" seed={seed}" if seed is not None else "")


def legend_labels(run_dirs: Sequence) -> tuple[list[str], str]:
    """Labels naming only what differs between the runs, and the part they share (for the title)."""
    settings = []
    for run_dir in run_dirs:
        setting, seed = run_setting(Path(run_dir))
        settings.append({**setting, "seed": "?" if seed is None else str(seed)})
    keys = list(dict.fromkeys(key for setting in settings for key in setting))
    shared = {k: settings[0][k] for k in keys if len({s.get(k) for s in settings}) == 1} if len(settings) > 1 else {}
    labels = [" ".join(f"{k}={v}" for k, v in s.items() if k not in shared) or "(defaults)" for s in settings]
    if len(set(labels)) < len(labels):  # the same setting and seed twice (two sweeps): tell them apart by path
        labels = [f"{label} ({run_dir})" for label, run_dir in zip(labels, run_dirs)]
    return labels, " ".join(f"{k}={v}" for k, v in shared.items())


def final_training_eps(run_dir) -> tuple[np.ndarray, float, float]:
    """Per-example training radii at the end of training, ``max(eps_base - offset, 0)``, from ``last.pt``.

    Returns ``(eps, eps_base, maxoff)``. Only the examples training visits (the first ``data.num_train``)
    are returned: the offsets of the others are never updated.
    """
    import torch

    from ..training import checkpoint

    path = run_checkpoint(run_dir, prefer=(rundir.LAST,))
    state = checkpoint.load(path)
    autoeps = state.get("autoeps")
    if not isinstance(autoeps, dict) or "offsets" not in autoeps:
        raise NotARunError(f"{path} holds no auto-eps state (expected an 'autoeps' entry with 'offsets', as "
                           "AutoEpsScheduler.state_dict() writes)")
    eps_base = autoeps.get("base", {}).get("eps")
    if not isinstance(eps_base, (int, float)):
        eps_base = read_metrics(run_dir)[-1]["eps_base"]
    offsets = torch.as_tensor(autoeps["offsets"]).double().flatten()
    num_train = ((state.get("config") or {}).get("data") or {}).get("num_train")
    if isinstance(num_train, int) and 0 < num_train < len(offsets):
        offsets = offsets[:num_train]
    eps = (float(eps_base) - offsets).clamp(min=0.0)
    return eps.numpy(), float(eps_base), float(autoeps.get("maxoff", float("nan")))


def margins_at_eps_eval(run_dir, num_test: int = 2000, method: Optional[str] = None, device=None,
                 batch_size: Optional[int] = None) -> tuple[np.ndarray, float, str]:
    """Eq. 6 margins of the first ``num_test`` test examples at the run's eps_eval.

    Bounds come from the run's training method (``bound.method``) unless ``method`` is given; CROWN-IBP is
    pure CROWN-IBP here (beta = 1), as at evaluation. Returns ``(margins, eps, method)``.
    """
    import torch

    from ..core.margins import bound_margin
    from ..training.build import LoaderSpec, load_saved_run, test_loader

    saved = load_saved_run(run_checkpoint(run_dir), device=device)
    method = method or saved.config["bound"]["method"]
    eps = float(saved.eps_eval)
    batch_size = batch_size or saved.eval_batch_size
    margins = []
    with torch.no_grad():
        for x, y, _ in test_loader(saved.data, LoaderSpec(batch_size, batch_size, None, None), saved.classifier.device,
                                   num_examples=num_test):
            lb = saved.classifier.margin_lower_bounds(x, y, eps, method=method)
            margins.append(bound_margin(lb).cpu())
    return torch.cat(margins).double().numpy(), eps, method


# --- the figures -------------------------------------------------------------------------------------------------

def plot_margins(run_dirs: Sequence, output, num_test: int = 2000, method: Optional[str] = None, device=None,
                 bins: int = 50) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    edges = np.linspace(-1.0, 1.0, bins + 1)
    labels, shared = legend_labels(run_dirs)
    eps_seen, methods_seen = set(), set()
    for run_dir, label in zip(run_dirs, labels):
        margins, eps, used = margins_at_eps_eval(run_dir, num_test=num_test, method=method, device=device)
        eps_seen.add(eps)
        methods_seen.add(used)
        verified = float((margins > 0).mean())
        # An outline plus a light fill: overlapping distributions stay readable.
        _, _, patches = ax.hist(margins, bins=edges, density=True, histtype="step", linewidth=1.5,
                                label=textwrap.fill(f"{label}: {100 * verified:.1f}% verified (n={len(margins)})", 90))
        ax.hist(margins, bins=edges, density=True, histtype="stepfilled", alpha=0.15, color=patches[0].get_edgecolor())
    ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("eq. 6 margin of the worst-case logits (> 0: verified)")
    ax.set_ylabel("density")
    ax.set_title(f"Test margins at eps {', '.join(f'{e:g}' for e in sorted(eps_seen))} "
                 f"({', '.join(sorted(methods_seen))} bounds)")
    if shared:
        fig.suptitle(textwrap.fill(shared, 100), fontsize="small")
    # Below the axes, so that long labels never cover the histograms.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, output)


def plot_training(run_dir, output) -> Path:
    records = read_metrics(run_dir)
    epochs = [r["epoch"] for r in records]

    def series(key):
        return [np.nan if r.get(key) is None else r[key] for r in records]

    def percent(key):
        return [100 * value for value in series(key)]

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    (clean_ax, verified_ax), (eps_ax, offset_ax) = axes
    clean_ax.plot(epochs, percent("clean_error"), marker=".", label="train")
    clean_ax.plot(epochs, percent("val_clean_error"), marker=".", label="validation")
    clean_ax.set(title="clean error", ylabel="%")
    verified_ax.plot(epochs, percent("verified_error"), marker=".", label="train (IBP, current eps)")
    verified_ax.plot(epochs, percent("val_verified_error"), marker=".", label="validation (IBP, eps_eval)")
    verified_ax.set(title="verified error", ylabel="%")
    eps_ax.plot(epochs, series("eps_base"), marker=".")
    eps_ax.set(title="eps_base (end of epoch)", xlabel="epoch", ylabel="eps (pixel units)")
    offset_ax.plot(epochs, series("autoeps_mean_offset"), marker=".", label="mean offset")
    offset_ax.plot(epochs, series("autoeps_max_offset"), marker=".", linestyle=":", label="max offset")
    offset_ax.set(title="auto-eps offsets (end of epoch)", xlabel="epoch", ylabel="eps (pixel units)")
    for ax in (clean_ax, verified_ax, offset_ax):
        ax.legend(fontsize="small")
    eps_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(textwrap.fill(run_label(run_dir), 100), fontsize="medium")
    return _save(fig, output)


def plot_eps(run_dir, output, bins: int = 50) -> Path:
    eps, eps_base, maxoff = final_training_eps(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Bins span [eps_base - maxoff, eps_base] (the reachable radii), so runs with the same maxoff compare.
    low = max(0.0, min(float(eps.min()), eps_base - (maxoff if np.isfinite(maxoff) else 0.0)))
    high = max(eps_base, float(eps.max()))
    if high - low < 1e-9:  # every radius equal (auto eps off): a narrow window around it
        low, high = max(0.0, high - 0.01), high + 0.01
    ax.hist(eps, bins=np.linspace(low, high, bins + 1))
    ax.axvline(eps_base, color="black", linewidth=0.8, linestyle="--", label=f"eps_base {eps_base:g}")
    reduced = float((eps < eps_base).mean())
    ax.set(xlabel="per-example training eps (pixel units)", ylabel="examples",
           title=f"Training eps at the end of training: maxoff {maxoff:g}, {100 * reduced:.1f}% of {len(eps)} "
                 "examples below eps_base")
    ax.legend(fontsize="small")
    fig.suptitle(textwrap.fill(run_label(run_dir), 100), fontsize="small")
    return _save(fig, output)


def group_by_setting(run_dirs: Sequence) -> list[tuple[str, list[Path]]]:
    """Runs grouped by setting (their overrides but the seed), in order of first appearance, each group labelled
    by what sets it apart from the others (``(defaults)`` when nothing does)."""
    groups: dict[tuple, list[Path]] = {}
    settings: dict[tuple, dict] = {}
    for run_dir in run_dirs:
        setting, _ = run_setting(Path(run_dir))
        key = tuple(sorted(setting.items()))
        groups.setdefault(key, []).append(Path(run_dir))
        settings[key] = setting
    keys = list(groups)
    all_keys = list(dict.fromkeys(k for key in keys for k in settings[key]))
    shared = {k for k in all_keys if len({settings[key].get(k) for key in keys}) == 1} if len(keys) > 1 else set()
    labels = [" ".join(f"{k}={v}" for k, v in settings[key].items() if k not in shared) or "(defaults)"
              for key in keys]
    return [(label, groups[key]) for label, key in zip(labels, keys)]


def time_curve(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """``(cumulative seconds, validation verified error in %)`` at the end of each logged epoch of one run.

    Seconds are each epoch's ``seconds`` (training plus the per-epoch validation check) summed; an epoch missing
    from the log (a torn run) would make the sum wrong, so the epochs must run 1, 2, ... without a gap.
    """
    records = read_metrics(run_dir)
    epochs = [r["epoch"] for r in records]
    if epochs != list(range(1, len(epochs) + 1)):
        raise NotARunError(f"{run_dir}: metrics.jsonl holds epochs {epochs}; time to accuracy needs every epoch "
                           "from 1 on (the seconds are summed)")
    for r in records:
        if not isinstance(r.get("seconds"), (int, float)) or not isinstance(r.get("val_verified_error"), (int, float)):
            raise NotARunError(f"{run_dir}: epoch {r['epoch']} of metrics.jsonl lacks 'seconds' or "
                               "'val_verified_error'")
    seconds = np.cumsum([float(r["seconds"]) for r in records])
    return seconds, 100.0 * np.array([float(r["val_verified_error"]) for r in records])


def plot_time(run_dirs: Sequence, output, labels: Optional[Sequence[str]] = None) -> Path:
    groups = group_by_setting(run_dirs)
    if labels is not None:
        if len(labels) != len(groups):
            raise ValueError(f"--label given {len(labels)} times, but the runs form {len(groups)} settings: "
                             + "; ".join(f"{label} ({len(dirs)} runs)" for label, dirs in groups))
        groups = [(label, dirs) for label, (_, dirs) in zip(labels, groups)]
    # Left: by epoch (the work done; free of the machine's load). Right: by wall-clock seconds as measured.
    fig, (epoch_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    val_sizes = set()
    for index, (label, dirs) in enumerate(groups):
        color = f"C{index}"
        curves = [time_curve(run_dir) for run_dir in dirs]
        for seconds, verified in curves:
            epoch_ax.plot(np.arange(1, len(verified) + 1), verified, color=color, linewidth=0.7, alpha=0.45)
            time_ax.plot(seconds, verified, color=color, linewidth=0.7, alpha=0.45)
        # The mean over seeds, epoch by epoch (time and error alike), over the epochs every run reached.
        epochs = min(len(seconds) for seconds, _ in curves)
        mean_seconds = np.mean([seconds[:epochs] for seconds, _ in curves], axis=0)
        mean_verified = np.mean([verified[:epochs] for _, verified in curves], axis=0)
        epoch_ax.plot(np.arange(1, epochs + 1), mean_verified, color=color, linewidth=2.2, marker="o")
        time_ax.plot(mean_seconds, mean_verified, color=color, linewidth=2.2, marker="o",
                     label=f"{label}: {mean_verified[-1]:.1f}% after {mean_seconds[-1]:.0f} s "
                           f"(mean of {len(curves)} run{'s' if len(curves) > 1 else ''})")
        for epoch, (x, y) in enumerate(zip(mean_seconds, mean_verified), start=1):
            time_ax.annotate(str(epoch), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small",
                             color=color)
        for run_dir in dirs:
            val_sizes.add((read_config(run_dir).get("trainer") or {}).get("val_examples"))
    sizes = ", ".join(str(v) for v in sorted(v for v in val_sizes if v is not None)) or "?"
    epoch_ax.set(xlabel="epoch", ylabel="verified error (%), IBP at eps_eval", ylim=(0, 106))
    epoch_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    time_ax.set(xlabel="wall-clock seconds (cumulative: training + per-epoch validation; epochs numbered)")
    for ax in (epoch_ax, time_ax):
        ax.grid(alpha=0.3)
    time_ax.legend(fontsize="small")
    fig.suptitle(f"Time to accuracy: validation verified error on {sizes} test examples at each epoch's end "
                 "(thick: mean over seeds, thin: each seed)", fontsize="medium")
    return _save(fig, output)


def expand_run_dirs(paths: Sequence) -> list[Path]:
    """Each path a run directory, or every run directory below it (a sweep); an empty directory is an error."""
    found = []
    for path in paths:
        runs = find_run_dirs(_need_dir(Path(path)))
        if not runs:
            raise NotARunError(f"{path} holds no run directory (expected config.yaml or .hydra/overrides.yaml in it "
                               "or below it)")
        found.extend(runs)
    return found


def _save(fig, output) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return output
