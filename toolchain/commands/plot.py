"""``rram plot``: accuracy vs fault rate from validate results (a box per rate per model)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="plot accuracy vs fault rate from validate results, or a sensitivity report")
    p.add_argument("results", nargs="+", help="results JSON files (one per model), or one `rram sensitivity` report")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg)")
    p.add_argument("--labels", default=None, help="comma-separated legend names, one per file")
    p.add_argument("--mixed", action="store_true",
                   help="overlay campaigns of different image counts or devices (each is then labelled with them)")
    p.add_argument("--title", default=None, help="figure title (default: what the files hold)")
    p.set_defaults(func=run)


def run(args) -> int:
    from runtime.fileio import check_output_path
    from runtime.plot import plot_results, plot_sensitivity
    from runtime.results import is_sensitivity

    check_output_path(args.out, inputs=args.results)
    if any(is_sensitivity(p) for p in args.results):
        if len(args.results) != 1:
            from ..errors import UserError

            raise UserError("a sensitivity report is plotted on its own: give one file")
        print(plot_sensitivity(args.results[0], args.out, title=args.title))
        return 0
    labels = args.labels.split(",") if args.labels else None
    print(plot_results(args.results, args.out, labels=labels, title=args.title, mixed=args.mixed))
    return 0
