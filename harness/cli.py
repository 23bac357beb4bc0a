"""`harness` command line: one subcommand per job, each a thin shell over a library function.

Errors that are the user's to fix (HarnessError, DataError) end in one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import sys

from datasets.errors import DataError
from harness.errors import HarnessError


def _cmd_data_synth(args):
    from datasets.synth import generate

    summary = generate(args.root, seed=args.seed, images=args.images)
    print(summary)


def _cmd_data_check(args):
    from datasets.check import check_dataset, format_report

    report = check_dataset(args.root, args.dataset, split_root=args.split_root, image_root=args.image_root)
    print(format_report(report))


def _cmd_methods(args):
    from methods import describe_methods

    print(describe_methods(preset=args.preset))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or validate REC data in the TransVG index format")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write the synthetic dataset under all five dataset names")
    synth.add_argument("--root", required=True, help="output folder (data/, ln_data/, vocab.txt)")
    synth.add_argument("--seed", type=int, default=13)
    synth.add_argument("--images", type=int, default=None, help="images per dataset name (default: the generator's)")
    synth.set_defaults(func=_cmd_data_synth)
    check = data_sub.add_parser("check", help="count and validate every record of a dataset")
    check.add_argument("--root", required=True, help="data root holding data/ (index) and ln_data/ (images)")
    check.add_argument("--dataset", required=True)
    check.add_argument("--split-root", default=None, help="index folder (default ROOT/data)")
    check.add_argument("--image-root", default=None, help="image folder (default ROOT/ln_data)")
    check.set_defaults(func=_cmd_data_check)

    methods = sub.add_parser("methods", help="list the registered methods and their tunable parameters")
    methods.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    methods.set_defaults(func=_cmd_methods)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (HarnessError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
