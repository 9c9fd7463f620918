"""Argument types and subcommand parsers shared by the ``smcdiff`` commands."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "unit_interval", "non_negative", "command"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def command(sub, name: str, *, help: str, description: str, epilog: str, width: int = 32):
    """A subcommand whose description and epilog keep their line breaks."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=width))
