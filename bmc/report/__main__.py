"""``python -m bmc.report multirun_outputs/<sweep> [--out DIR] [--metrics ...] [--method-keys ...] [--baseline ROW]
[--alpha A]``
or ``python -m bmc.report --wandb entity/project --group <sweep> --out DIR``."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from bmc.report import (
    ALPHA,
    DEFAULT_BASELINE,
    Report,
    fetch_wandb_runs,
    load_sweep,
    log_report_to_wandb,
    records_from_wandb,
    write_report,
)

log = logging.getLogger("bmc.report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bmc.report", description=__doc__)
    parser.add_argument("sweep", nargs="?", help="sweep folder (multirun_outputs/<sweep>); omit with --wandb")
    parser.add_argument("--out", help="output folder (default: the sweep folder)")
    parser.add_argument("--metrics", nargs="+", help="metrics (columns per task); default: headline metrics")
    parser.add_argument(
        "--method-keys", nargs="+", help="keys that define a method (row); default: the keys the sweep varies"
    )
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"row that differences beyond noise are marked against (default: {DEFAULT_BASELINE}; none: no marks)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=ALPHA,
        help=f"family-wise error rate of a table's marks, Holm-corrected across its cells (default: {ALPHA})",
    )
    parser.add_argument("--decimals", type=int, default=3, help="decimals shown in the tables")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from the W&B API instead")
    parser.add_argument("--group", help="W&B group (a sweep's runs share the sweep folder's name)")
    args = parser.parse_args(argv)
    if not args.sweep and not args.wandb:
        parser.error("give a sweep folder or --wandb entity/project")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be between 0 and 1, not {args.alpha}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.wandb:
        records = records_from_wandb(fetch_wandb_runs(args.wandb, args.group), args.method_keys)
        if not records:
            log.error("no W&B runs in %s%s", args.wandb, f" group {args.group}" if args.group else "")
            return 1
        out = Path(args.out or args.sweep or f"wandb_report_{args.group or args.wandb.replace('/', '_')}")
    else:
        try:
            records = load_sweep(args.sweep, args.method_keys)
        except FileNotFoundError as error:
            log.error("%s", error)
            return 1
        out = Path(args.out or args.sweep)
    baseline = None if args.baseline.lower() == "none" else args.baseline
    report = write_report(records, out, args.metrics, args.decimals, not args.no_plots, baseline, args.alpha)
    print(report.table.to_markdown())
    bad = [r for r in records if not r.ok]
    if bad:
        print(f"{len(bad)} of {len(records)} runs did not complete (marked, not averaged):")
        for r in bad:
            print(f"  {r.name}: {r.status}: {r.error_line}")
    print(f"wrote {', '.join(str(p) for p in report.files)}")
    if args.wandb:
        _log_to_wandb(report, args.wandb, args.group)
    return 0


def _log_to_wandb(report: Report, path: str, group: str | None) -> None:
    """Log the report as a run of job type ``report`` in the same project and group, when W&B is online."""
    from bmc.loggers import wandb_mode

    if wandb_mode() != "online":
        log.info("report not logged to W&B: W&B is %s (set WANDB_API_KEY or WANDB_MODE=online)", wandb_mode())
        return
    import wandb

    entity, _, project = path.rpartition("/")
    with wandb.init(project=project, entity=entity or None, group=group, job_type="report") as run:
        log_report_to_wandb(report.table, report.files, run=run, name=re.sub(r"[^\w.-]", "_", f"report-{group}"))


if __name__ == "__main__":
    sys.exit(main())
