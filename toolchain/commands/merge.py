"""``rram merge``: combine shard (or resumed) results files of one validate configuration."""
from __future__ import annotations

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="combine `rram validate --shard` results files")
    p.add_argument("results", nargs="+", help="results JSON files of one configuration")
    p.add_argument("--out", required=True, help="merged results JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from runtime.errors import RuntimeInputError
    from runtime.fileio import check_output_path
    from runtime.results import merge, read_results, write_results

    from .validate import print_summary

    check_output_path(args.out)
    if Path(args.out).resolve() in {Path(r).resolve() for r in args.results}:
        raise UserError(f"--out {args.out} is one of the files to merge: write the merged result elsewhere")
    doc = merge(args.results)  # every check happens before anything is written
    if Path(args.out).exists():  # re-merging one campaign may replace its merge; nothing else
        try:
            same = read_results(args.out)["config"] == doc["config"]
        except RuntimeInputError:  # unreadable, or not a results file: not ours to replace
            same = False
        if not same:
            raise UserError(f"--out {args.out} exists and is not a merge of this configuration "
                            f"(another campaign's results?): choose another --out")
    write_results(doc, args.out)
    print_summary(doc)
    if not doc["complete"]:
        print("note: the merged files do not cover every run of the configuration")
    return 0
