"""``rram pipeline CONFIG.toml``: train -> recalibrate -> export -> passes -> quantize ->
validate -> report in one run folder, each step skipped when its inputs and settings are
unchanged (docs/pipeline.md)."""
from __future__ import annotations


def add_parser(sub) -> None:
    from ..pipeline import STAGES

    p = sub.add_parser("pipeline", help="the whole flow from a TOML config, cached step by step, with a report",
                       description="Run the flow described by CONFIG.toml (keys: docs/pipeline.md) into its "
                                   "run folder; a step whose inputs and settings are unchanged is skipped.")
    p.add_argument("config", metavar="CONFIG.toml", help="the pipeline configuration (every key: docs/pipeline.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each step with run/skip and why; change no file")
    p.add_argument("--from", dest="from_stage", choices=STAGES, default=None, metavar="STAGE",
                   help=f"re-run this stage and every later one ({', '.join(STAGES)})")
    p.add_argument("--until", dest="until_stage", choices=STAGES, default=None, metavar="STAGE",
                   help="stop after this stage (e.g. --until train on a GPU machine; the rest runs later "
                        "where the data and CPUs are)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline import Pipeline, execute, load_config

    return execute(Pipeline(load_config(args.config)), dry_run=args.dry_run, from_stage=args.from_stage,
                   until_stage=args.until_stage)
