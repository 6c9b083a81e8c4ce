"""The ``gauge`` console script: one subcommand per module of :mod:`analyses`.

A subcommand is a module ``analyses/<name>.py`` with ``HELP`` (its one-line help),
``add_arguments(parser)`` and ``run(args) -> int``; it is listed in :data:`SUBCOMMANDS` and
called ``gauge <name>`` with underscores written as hyphens (``align_many.py`` is
``gauge align-many``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from analyses.common import USER_ERRORS, OneLineParser, UsageError

#: The subcommand modules, in the order ``gauge --help`` lists them.
SUBCOMMANDS = ("train", "imp", "align", "connect", "instability", "overlap", "transfer",
               "flatness", "report", "demo", "sweep", "align_many", "merge", "curve",
               "quotient", "similarity", "drift", "erasure", "spec")


def command_name(module_name: str) -> str:
    """``align_many`` -> ``align-many``."""
    return module_name.replace("_", "-")


def _module(module_name: str):
    return importlib.import_module(f"analyses.{module_name}")


#: command -> its one-line help (each module's ``HELP``).
COMMANDS = {command_name(name): _module(name).HELP for name in SUBCOMMANDS}


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="gauge",
        description="Symmetry (gauge) analysis of neural networks around the Lottery Ticket "
                    "Hypothesis: find tickets, align networks, measure barriers, overlap and "
                    "flatness modulo symmetry.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in SUBCOMMANDS:
        module = _module(name)
        p = sub.add_parser(command_name(name), help=module.HELP,
                           description=module.__doc__ or module.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def run_command(module, argv=None) -> int:
    """Entry point of ``python -m analyses.<name>``."""
    spec = getattr(module, "__spec__", None)
    name = (spec.name if spec is not None else module.__name__).rsplit(".", 1)[-1]
    return main([command_name(name), *(sys.argv[1:] if argv is None else argv)])


def _configure(args) -> None:
    """Process-wide settings, made once here and never by a subcommand: figures render without
    a display (unless MPLBACKEND says otherwise), and ``--threads`` sets torch's CPU threads."""
    import matplotlib
    matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _configure(args)
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
