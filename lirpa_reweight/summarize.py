"""The paper's results table from finished runs: ``python -m lirpa_reweight.summarize DIR [--by-method]`` (or
``lirpa-summarize``).

Finds every run directory under DIR (a directory with ``.hydra/overrides.yaml`` or ``config.yaml``),
groups the runs by setting (their command-line overrides other than the seed and other than keys that do
not change what is trained; a hook group labelled by what its ``config.yaml`` says ran), and reports clean
and verified error as mean +- sample std (ddof=1) over seeds, in percent, with the best row (lowest mean verified error) marked. The table is printed and written
as ``summary.md`` and ``summary.csv`` in DIR. Runs without ``final.json`` (failed or unfinished) are
listed under the table with the last epoch they logged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .reports.runs import parse_override
from .reports.table import format_markdown, optuna_section, paired_differences, summarize, write_csv


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lirpa_reweight.summarize", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="a multirun (or outputs) directory, or one run directory")
    parser.add_argument("--by-method", action="store_true",
                        help="add a verified-error column per bound method (IBP, CROWN-IBP, CROWN, alpha-CROWN)")
    parser.add_argument("--paired-to", default=None, metavar="SETTING",
                        help="baseline row, e.g. 'reweight=off autoeps=off': add each row's same-seed difference "
                             "in verified error to it (mean ± std over the seeds both have)")
    parser.add_argument("--output-prefix", type=Path, default=None,
                        help="write PREFIX.md and PREFIX.csv instead of DIR/summary.md and DIR/summary.csv")
    args = parser.parse_args(argv)
    try:
        rows, incomplete = summarize(args.dir)
        optuna = optuna_section(args.dir, rows)
        paired = None
        if args.paired_to is not None:
            paired = paired_differences(rows, dict(parse_override(item) for item in args.paired_to.split()))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = format_markdown(args.dir, rows, incomplete, by_method=args.by_method, paired=paired) + optuna
    prefix = args.output_prefix if args.output_prefix is not None else args.dir / "summary"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")
    md_path.write_text(text)
    write_csv(csv_path, rows)
    print(text, end="")
    print(f"\nwritten: {md_path}, {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
