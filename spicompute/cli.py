"""Command line: ``spicompute <stage> [options]``, one subcommand per stage.

Stage commands live in :mod:`spicompute.stages`, one module each; a module
defines ``COMMAND`` (the subcommand name), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.  They are discovered
automatically, so adding a stage never touches this file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from pathlib import Path

from spicompute import __version__
from spicompute.errors import OutputError, SpiError, one_line
from spicompute.execution import tune_malloc

log = logging.getLogger("spicompute")


#: options that name outputs (files, or folders for checkpoints and logs); a stage whose
#: option of one of these names is an input declares its own ``OUTPUTS``
OUTPUTS = ("out", "truth", "frames_table", "part", "metrics", "h5", "model", "checkpoints", "live",
           "table")


def check_writable(args) -> None:
    """OutputError unless every output's folder (or its nearest existing ancestor) is writable.

    Runs before the stage does any work: a read-only output folder must not
    cost a whole EMC run first.
    """
    for name in args._outputs:
        value = getattr(args, name, None)
        if not value or not isinstance(value, str):
            continue
        path = Path(value)
        if path.is_dir() and name not in ("checkpoints", "live"):
            raise OutputError(path, "is a directory")
        folder = path if name in ("checkpoints", "live") else path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(path, f"{folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(path, f"folder {folder} is not writable")


class PipelineDefault(str):
    """An output path left at the pipeline's default, i.e. not named on the command line (argparse
    keeps a string default's object as it is, so the marker survives parsing)."""


def outputs_beside_out(args) -> list[tuple[str, str]]:
    """Move a hand run's other outputs next to its ``--out``: [(option, new path)].

    Every output option defaults to the pipeline's layout (``metrics/<stage>.json``,
    ``results/parts/...``, ``checkpoints/<stage>``, ...), which ``dvc.yaml`` spells out in full.
    A user who runs a stage by hand with ``--out`` somewhere else and leaves, say, ``--metrics``
    alone would otherwise overwrite the versioned pipeline's metrics, tables and checkpoints
    with those of an unrelated run.  So when ``--out`` is named and differs from its default, each
    other output left at its default (a :class:`PipelineDefault`) moves under the same root:
    ``<root>/<default path>``, where ``root`` is ``--out``'s folder (or, when that folder ends
    like the default's, e.g. ``run1/data/`` for ``data/averages.h5``, the part before it).  Where
    that would give back the pipeline's own paths (``--out data/averages_try.h5``, ``--out
    try.h5``) or a filesystem root, ``root`` is a folder named after ``--out`` beside it
    (``data/averages_try/``).  Options named on the command line are kept, even when they name
    the default.
    """
    defaults = getattr(args, "_output_defaults", {})
    out, default_out = getattr(args, "out", None), defaults.get("out")
    if not isinstance(out, str) or isinstance(out, PipelineDefault) or not isinstance(default_out, str) \
            or not out or Path(out) == Path(default_out):
        return []
    folder, default_folder = Path(out).parent, Path(default_out).parent.parts
    root = folder
    if default_folder and folder.parts[-len(default_folder):] == default_folder:
        root = Path(*folder.parts[:-len(default_folder)]) if len(folder.parts) > len(default_folder) else Path(".")
    names = [name for name in defaults if name != "out" and isinstance(getattr(args, name, None), PipelineDefault)]
    if root == Path(root.anchor) or any((root / defaults[name]).resolve() == Path(defaults[name]).resolve()
                                        for name in names):
        # --out beside its default (data/averages_try.h5), in the working folder or at a filesystem
        # root: the mirrored paths would be the pipeline's own; use a folder named after --out
        root = Path(out).parent / Path(out).stem
    for name in names:
        setattr(args, name, str(root / defaults[name]))
    return [(name, str(root / defaults[name])) for name in names]


def clean_stale_temporaries(args) -> None:
    """Remove temporaries that killed earlier runs left beside this stage's outputs."""
    from spicompute.io.storage import remove_stale_temporaries

    folders = set()
    for name in args._outputs:
        value = getattr(args, name, None)
        if not value or not isinstance(value, str):
            continue
        path = Path(value)
        folders.add(path.parent)
        if name in ("checkpoints", "live"):
            folders.add(path)
    for folder in sorted(folders):
        for tmp in remove_stale_temporaries(folder):
            log.info("removed %s, left by a run that was killed", tmp)


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
        outputs = getattr(module, "OUTPUTS", OUTPUTS)
        defaults = {name: p.get_default(name) for name in outputs}
        p.set_defaults(_run=module.run, _outputs=outputs, _output_defaults=defaults,
                       **{name: PipelineDefault(value) for name, value in defaults.items()
                          if isinstance(value, str) and value})
    return parser


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
    for name, path in outputs_beside_out(args):
        log.info("%s: --out is outside the pipeline's layout, so --%s goes beside it: %s "
                 "(name it to choose)", args.command, name.replace("_", "-"), path)
    hooks = sys.excepthook, sys.unraisablehook
    # a failed HDF5 write (full disk) makes h5py report every object it cannot close; the one
    # line below says what happened, the rest goes to the debug log
    sys.excepthook = lambda *exc: log.debug("suppressed: %s", exc[1])
    sys.unraisablehook = lambda u: log.debug("unraisable in %r: %s", u.object, u.exc_value)
    # the stages' per-block temporaries stay in the heap instead of being mmap-ed and page-faulted
    # again at every allocation (17 % of a classify2d run; spicompute.execution.MALLOC_MMAP_THRESHOLD)
    tune_malloc()
    try:
        check_writable(args)
        clean_stale_temporaries(args)
        # stages register outputs that are committed when run() returns and discarded when it
        # raises (e.g. the vae's training-curve folder) on args._resources
        with contextlib.ExitStack() as args._resources:
            return int(args._run(args) or 0)
    except SpiError as exc:
        print(f"spicompute {args.command}: error: {one_line(exc)}", file=sys.stderr)
        if isinstance(exc, OutputError) and argv is None:
            # HDF5 may crash closing a file whose writes failed: leave without finalisers
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        print(f"spicompute {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.excepthook, sys.unraisablehook = hooks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
