"""Helpers shared by the stage commands."""

from __future__ import annotations

import logging
import os

from spicompute.params import load_params, section


def stage_params(args, name: str) -> dict:
    """Section ``name`` of the parameter file given by ``--params``."""
    return section(load_params(args.params), name, args.params)


def all_params(args) -> dict:
    return load_params(args.params)


def progress_disabled(args) -> bool:
    """Progress bars off with --quiet or when not attached to a terminal in CI."""
    return bool(getattr(args, "quiet", False)) or os.environ.get("SPICOMPUTE_NO_PROGRESS") == "1"


def get_logger(stage: str) -> logging.Logger:
    return logging.getLogger(f"spicompute.{stage}")
