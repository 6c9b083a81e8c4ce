"""analyses: the command-line analyses behind the ``gauge`` console script.

Each subcommand is a module of this package (``analyses/<name>.py``) with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; it composes :mod:`tickets` and :mod:`gauge`,
and owns files, figures and printing. Each is also runnable as ``python -m analyses.<name>``.
"""
