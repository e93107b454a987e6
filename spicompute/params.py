"""Reading ``params.yaml`` sections and validating parameter values.

Each stage reads its own section (``simulate``, ``classify2d`` ...) and gets a
plain dict.  The validators raise :class:`~spicompute.errors.ParameterError`
with the dotted parameter name, so a user knows which key to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from spicompute.errors import InputError, ParameterError

#: the sections of params.yaml, one per stage (a typo in a section name must not be ignored)
SECTIONS = ("data", "simulate", "classify2d", "ccmatrix", "embed", "regress", "orient", "select", "vae",
            "volumes", "phase")


def load_params(path: str | Path = "params.yaml") -> dict:
    """Whole parameter file as a dict (empty dict for an empty file); unknown sections are an error."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "parameter file not found")
    if not path.is_file():
        raise InputError(path, None, "parameter file is not a regular file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(path, None, f"not valid YAML{where} ({exc.__class__.__name__})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot be read ({exc.__class__.__name__})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, None, "top level must be a mapping of sections")
    unknown = sorted(str(k) for k in set(data) - set(SECTIONS))
    if unknown:
        raise InputError(path, unknown[0], f"unknown section (known: {', '.join(SECTIONS)})")
    return data


def section(params: dict, name: str, path: str | Path = "params.yaml") -> dict:
    """One section of the parameter file; missing section -> error naming it."""
    if name not in params:
        raise InputError(path, name, "section missing from the parameter file")
    value = params[name]
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(path, name, "section must be a mapping")
    return dict(value)


def positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False):
    """Return ``value`` if it is a finite positive number, else raise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ParameterError(name, f"must be finite, got {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        raise ParameterError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if integer:
        if int(number) != number:
            raise ParameterError(name, f"must be an integer, got {value!r}")
        return int(number)
    return number


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) within the bounds, else raise."""
    if isinstance(value, bool):
        raise ParameterError(name, f"must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be an integer, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")) or int(number) != number:
        raise ParameterError(name, f"must be an integer, got {value!r}")
    number = int(number)
    if minimum is not None and number < minimum:
        raise ParameterError(name, f"must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ParameterError(name, f"must be <= {maximum}, got {value!r}")
    return number


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is a YAML boolean; a quoted "false" must not count as true."""
    if not isinstance(value, bool):
        raise ParameterError(name, f"must be true or false, got {value!r}")
    return value


def in_range(name: str, value: Any, low: float, high: float, *,
             low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` if it lies in the interval, else raise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a number, got {value!r}") from None
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if too_low or too_high or number != number:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise ParameterError(name, f"must lie in {interval}, got {value!r}")
    return number


def choice(name: str, value: Any, options) -> Any:
    """Return ``value`` if it is one of ``options``, else raise."""
    if value not in options:
        raise ParameterError(name, f"must be one of {sorted(options)}, got {value!r}")
    return value


def with_defaults(section_name: str, raw: dict, defaults) -> dict:
    """``raw`` merged over ``defaults``; a key not among the defaults is an error.

    ``defaults`` is a dict, or any iterable of known keys (e.g. dataclass
    fields) when the caller fills the defaults itself.
    """
    known = set(defaults)
    unknown = set(raw) - known
    if unknown:
        raise ParameterError(f"{section_name}.{sorted(unknown)[0]}", "unknown parameter")
    base = dict(defaults) if isinstance(defaults, dict) else {}
    return {**base, **raw}


_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://[^\s/]+(:\d+)?/?$|^[A-Za-z0-9_.\-]+:\d+$")


def validate_scheduler(name: str, value) -> str:
    """A stage's ``scheduler``: ``""`` in-process | ``local:N`` | a Dask scheduler address
    (:mod:`spicompute.execution`); ``name`` is the dotted parameter.

    Returns the string ("" for None).  Raises :class:`ParameterError` for a
    non-string, ``local:`` without a positive integer, or something that is
    not an address (``scheme://host[:port]`` or ``host:port``).
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParameterError(name, f"must be '' | 'local:N' | a scheduler address, got {value!r}")
    value = value.strip()
    if not value:
        return ""
    if value == "local" or value.startswith("local:"):
        _, _, n = value.partition(":")
        try:
            workers = int(n)
        except ValueError:
            raise ParameterError(name, f"'local:N' needs an integer N, got {value!r}") from None
        if workers < 1:
            raise ParameterError(name, f"'local:N' needs N >= 1, got {value!r}")
        return value
    if not _ADDRESS.match(value):
        raise ParameterError(name, f"not a Dask scheduler address (tcp://host:port) or local:N: {value!r}")
    return value
