"""The ``gauge`` console script: one subcommand per module of :mod:`analyses`."""

from __future__ import annotations

import argparse
import importlib
import sys

from analyses.common import USER_ERRORS, OneLineParser

#: subcommand -> one-line explanation of the concept it measures.
COMMANDS = {
    "train": "train a zoo model on an offline dataset and save a safetensors checkpoint",
    "imp": "find lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin 2019)",
    "align": "align checkpoint B to A under neuron permutations (Hungarian weight/activation matching)",
    "connect": "linear mode connectivity: loss/error barrier along the path between two checkpoints",
    "instability": "instability analysis: barrier between two copies trained from iteration k with different data orders (Frankle et al. 2020)",
    "overlap": "mask overlap of tickets across seeds, raw and modulo permutation, against chance",
    "transfer": "move a ticket from one seed to another by permuting its mask (sparse re-basin)",
    "flatness": "Hessian spectrum, trace, sharpness and landscapes, raw and gauge-fixed",
    "report": "build the HTML report (figures + results.json) from existing IMP run directories",
    "spec": "show the permutation spec of a model: groups, members, what is held fixed, as a graph",
    "demo": "run the whole study on embedded MNIST-1D and write a report",
}


def _load(name: str):
    try:
        return importlib.import_module(f"analyses.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"analyses.{name}":
            return None  # subcommand not part of this build
        raise


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="gauge",
        description="Symmetry (gauge) analysis of neural networks around the Lottery Ticket "
                    "Hypothesis: find tickets, align networks, measure barriers, overlap and "
                    "flatness modulo symmetry.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name, help_line in COMMANDS.items():
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_line, description=module.__doc__ or help_line,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def run_command(module, argv=None) -> int:
    """Entry point of ``python -m analyses.<name>``."""
    spec = getattr(module, "__spec__", None)
    name = (spec.name if spec is not None else module.__name__).rsplit(".", 1)[-1]
    return main([name, *(sys.argv[1:] if argv is None else argv)])


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"gauge {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gauge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
