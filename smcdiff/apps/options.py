"""Argument types, subcommand parsers and up-front output checks shared by the ``smcdiff`` commands.

A command checks where it will write *before* it samples anything, so a wrong ``--out`` costs a
second, not the whole run:

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_output_folder(folder / "new", "--outdir") == folder / "new"   # created, writable
    True
    >>> check_output_file(folder / "new", "--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --out ...new is a folder; expected a file name
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

__all__ = [
    "Parser",
    "UsageError",
    "check_output_file",
    "check_output_folder",
    "command",
    "figure_suffixes",
    "non_negative",
    "positive_int",
    "unit_interval",
]

class UsageError(SystemExit):
    """A user error of the command line: ``str(err)`` is the ``error: ...`` line, the exit code is 2.

    :func:`smcdiff.apps.cli.main` prints the line on stderr and lets the exception end the
    process (exit status 2, no traceback).
    """

    def __init__(self, message: str):
        message = message if message.startswith("error:") else f"error: {message}"
        super().__init__(message)
        self.code = 2

    def __str__(self) -> str:
        return str(self.args[0])


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are two short lines (a usage hint, then ``prog: error: ...``)
    instead of the whole usage text; exit status 2 as usual. Its subcommands are ``Parser``s too."""

    def error(self, message: str):
        self.exit(2, f"usage: {self.prog} [options]   (all options: {self.prog} --help)\n{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def command(sub, name: str, *, help: str, description: str, epilog: str, width: int = 32):
    """A subcommand whose description and epilog keep their line breaks."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=width))


def figure_suffixes() -> tuple[str, ...]:
    """The file endings matplotlib's ``savefig`` can write here (``(".png", ".pdf", ...)``)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted("." + k for k in FigureCanvasBase.get_supported_filetypes()))


def _probe(folder: Path, what: str) -> None:
    """Create and remove a temporary file in ``folder``; ``ValueError`` saying why it cannot be written."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".smcdiff-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise ValueError(f"{what} {folder}: cannot write there ({err.strerror or err})") from None


def check_output_folder(path, what: str = "--out") -> Path:
    """Make sure ``path`` is a folder this process can write in (created if missing); return it.

    ``ValueError`` naming the option ``what`` for an empty path, a path that is a file or lies
    under a file, and a folder that cannot be created or written in.
    """
    if path is None or str(path) == "":
        raise ValueError(f"{what}: expected a folder, got an empty path")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {folder}: cannot create the folder ({err.strerror or err})") from None
    _probe(folder, what)
    return folder


def check_output_file(path, what: str = "--out", suffixes: tuple[str, ...] | None = None) -> Path:
    """Make sure a file can be written at ``path`` (its folder is created if missing); return it.

    ``ValueError`` naming the option ``what`` for an empty path, a path that is a folder, a folder
    that cannot be created or written in, and (with ``suffixes``) a name whose ending is missing or
    not in ``suffixes``. An existing file is overwritten later, as usual.
    """
    if path is None or str(path) == "":
        raise ValueError(f"{what}: expected a file name, got an empty path")
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{what} {file} is a folder; expected a file name")
    if suffixes is not None and file.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {file}: expected a name ending in one of {', '.join(suffixes)}")
    check_output_folder(file.parent, f"{what} {file}: folder")
    return file
