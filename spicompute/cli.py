"""Command line: ``spicompute <stage> [options]``, one subcommand per stage.

Stage commands live in :mod:`spicompute.stages`, one module each; a module
defines ``COMMAND`` (the subcommand name), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.  They are discovered
automatically, so adding a stage never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from spicompute import __version__
from spicompute.errors import SpiError

log = logging.getLogger("spicompute")


def _stage_modules():
    import spicompute.stages as stages_pkg

    modules = []
    for info in sorted(pkgutil.iter_modules(stages_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"spicompute.stages.{info.name}")
        if hasattr(module, "COMMAND"):
            modules.append(module)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spicompute",
        description="SPI Landscape pipeline stages. Each reads its section of params.yaml.",
    )
    parser.add_argument("--version", action="version", version=f"spicompute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<stage>")
    sub.required = True
    for module in _stage_modules():
        p = sub.add_parser(module.COMMAND, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--params", default="params.yaml",
                       help="parameter file (default: params.yaml)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="warnings only, no progress bars")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (HDF5 and OS messages may span several)."""
    return " ".join(str(exc).split())


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _StdHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at the time (test capture swaps them)."""

    def __init__(self, name: str):
        super().__init__(getattr(sys, name))
        self.std_name = name

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self.std_name)
        super().emit(record)


def configure_logging(level: int) -> None:
    """Progress (DEBUG, INFO) to stdout; warnings and errors to stderr.

    So stderr holds only problems: a failed stage's stderr is its one error
    line (plus any warnings that preceded it), never the progress log.
    """
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdHandler)]:
        root.removeHandler(handler)  # main() called again in one process (tests)
    out = _StdHandler("stdout")
    out.addFilter(_Below(logging.WARNING))
    err = _StdHandler("stderr")
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    configure_logging(level)
    try:
        return int(args._run(args) or 0)
    except SpiError as exc:
        print(f"spicompute {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spicompute {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
