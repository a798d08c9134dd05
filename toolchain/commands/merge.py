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
    from runtime.fileio import check_output_path, output_lock
    from runtime.results import merge, read_results, write_results

    from .validate import print_summary

    check_output_path(args.out)
    if Path(args.out).resolve() in {Path(r).resolve() for r in args.results}:
        raise UserError(f"--out {args.out} is one of the files to merge: write the merged result elsewhere")
    doc = merge(args.results)  # every check happens before anything is written
    with output_lock(args.out, "rram merge"):  # checked and written by one process only
        if Path(args.out).exists():  # re-merging one campaign may grow its merge; nothing else
            try:
                old = read_results(args.out)
            except RuntimeInputError:  # unreadable, or not a results file: not ours to replace
                old = None
            if old is None or old["config"] != doc["config"]:
                raise UserError(f"--out {args.out} exists and is not a merge of this configuration "
                                f"(another campaign's results?): choose another --out")
            lost = sum(1 for mine, theirs in zip(doc["rates"], old["rates"]) for r in theirs["runs"]
                       if r not in mine["runs"])
            if lost:  # a merge never shrinks what a file holds
                raise UserError(f"--out {args.out} holds {lost} chip(s) that the merged files lack: merging "
                                f"would lose them; choose another --out")
        write_results(doc, args.out)
    print_summary(doc)
    if not doc["complete"]:
        print("note: the merged files do not cover every run of the configuration")
    return 0
