"""Pictures of finished runs: ``python -m lirpa_reweight.plot {margins,training,eps,time} RUN_DIR [RUN_DIR ...]``
(or ``lirpa-plot``).

- ``margins``: the paper's Figure 3, the distribution of test-set eq. 6 margins at the run's eps_eval, bounded
  with the run's training method (or ``--method``), several runs overlaid.
- ``training``: clean and verified error (train and validation), eps_base and mean offset per epoch.
- ``eps``: the per-example training radii at the end of training, ``max(eps_base - offset, 0)``.
- ``time``: validation verified error against cumulative wall-clock seconds (time to accuracy); runs of the same
  setting (seeds) form one group, drawn as thin per-seed lines and their mean. A directory that is not a run
  stands for every run below it (a sweep).

The figure goes to ``RUN_DIR/<kind>.png`` (the first RUN_DIR for ``margins``) unless ``--output`` says otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .errors import ExpectedFailure
from .reports.figures import KINDS, expand_run_dirs, plot_eps, plot_margins, plot_time, plot_training


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lirpa_reweight.plot", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS, help="which figure")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories written by lirpa_reweight.train (several only for margins and "
                             "time; for time, a sweep directory stands for its runs)")
    parser.add_argument("--output", type=Path, default=None, help="PNG path (default: RUN_DIR/<kind>.png)")
    parser.add_argument("--num-test", type=int, default=2000, help="margins: test examples per run (default 2000)")
    parser.add_argument("--method", choices=("IBP", "CROWN-IBP"), default=None,
                        help="margins: bound method (default: each run's training method)")
    parser.add_argument("--device", default=None, help="margins: torch device (default: CUDA when available)")
    parser.add_argument("--label", action="append", default=None, metavar="LABEL",
                        help="time: a name per setting, in order of first appearance (default: what sets it apart)")
    args = parser.parse_args(argv)
    if args.kind not in ("margins", "time") and len(args.run_dirs) > 1:
        parser.error(f"{args.kind} takes one RUN_DIR, got {len(args.run_dirs)}")
    if args.label is not None and args.kind != "time":
        parser.error(f"--label is for the time plot, not {args.kind}")
    if args.num_test < 1:
        parser.error(f"--num-test must be >= 1, got {args.num_test}")
    output = args.output or args.run_dirs[0] / f"{args.kind}.png"
    try:
        if args.kind == "margins":
            written = plot_margins(args.run_dirs, output, num_test=args.num_test, method=args.method,
                                   device=args.device)
        elif args.kind == "time":
            written = plot_time(expand_run_dirs(args.run_dirs), output, labels=args.label)
        elif args.kind == "training":
            written = plot_training(args.run_dirs[0], output)
        else:
            written = plot_eps(args.run_dirs[0], output)
    except (ExpectedFailure, ValueError, FileNotFoundError) as error:  # NotARunError, a checkpoint of another kind
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"written: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
