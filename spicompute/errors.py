"""Exceptions with messages that name the offending file and field."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 0) -> str:
    """The exception's message on one line (HDF5, OS and Dask messages may span several),
    cut to ``limit`` characters when ``limit`` > 0."""
    text = " ".join(str(exc).split())
    return text if not limit or len(text) <= limit else text[:limit] + " ..."


class SpiError(Exception):
    """Base class for all errors the CLI reports as a one-line message."""


class InputError(SpiError):
    """Bad input data: missing dataset, wrong shape, NaN, corrupt file ...

    The message always names the file and (where there is one) the field.
    """

    def __init__(self, path, field: str | None, problem: str):
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {problem}")


class ParameterError(SpiError):
    """An absurd or inconsistent parameter (negative wavelength, 0 frames ...)."""

    def __init__(self, name: str, problem: str, source: str | None = None):
        self.name = name
        self.problem = problem
        where = f"{source}: " if source else ""
        super().__init__(f"{where}parameter {name}: {problem}")


class OutputError(SpiError):
    """An output cannot be written: read-only folder, full disk, quota, file size limit ..."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"cannot write {self.path}: {problem}")
