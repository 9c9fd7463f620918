"""One error for every file that is not what it should be: :class:`FileFormatError`.

Every loader in smcdiff (EDM network pickles, smcdiff's own networks, discriminator
checkpoints, FID statistics) maps an empty, truncated, corrupt or wrong-format file to a
:class:`FileFormatError` (a ``ValueError``) whose message names the file, says what it should be
and what it looks like instead, e.g.::

    net.pkl: not an EDM network pickle (a pickle of a dict with an 'ema' network, as EDM's
    training writes); it looks like a torch.save checkpoint (zip archive) (...)

A missing file stays a ``FileNotFoundError``. :func:`describe_file` guesses a file's format from
its first bytes; :func:`torch_load_file` is ``torch.load(weights_only=True)`` with that mapping.

    >>> import io
    >>> describe_file(io.BytesIO(b""))
    'an empty file (0 bytes)'
    >>> describe_file(io.BytesIO(b"\\x93NUMPY..."))
    'a NumPy .npy array'
"""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
import zlib
from typing import Any

import torch

__all__ = ["FileFormatError", "READ_ERRORS", "describe_file", "file_format_error", "torch_load_file"]


class FileFormatError(ValueError):
    """A file is empty, truncated, corrupt or of another format than the one expected."""


#: Exceptions that readers raise on a damaged or foreign file (mapped to :class:`FileFormatError`).
READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
               struct.error, UnicodeDecodeError, OverflowError, zipfile.BadZipFile, zlib.error, RuntimeError,
               ImportError, MemoryError)


def _head(source, n: int = 64) -> bytes | None:
    """The first ``n`` bytes of a path or a seekable binary file (position restored), or None."""
    try:
        if hasattr(source, "read"):
            pos = source.tell()
            try:
                source.seek(0)
                data = source.read(n)
            finally:
                source.seek(pos)
            return data if isinstance(data, bytes) else None
        with open(os.fspath(source), "rb") as f:
            return f.read(n)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _zip_kind(source) -> str:
    try:
        with zipfile.ZipFile(source, "r") as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "a damaged or truncated zip archive"
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    if any(n.endswith("data.pkl") for n in names):
        return "a torch.save checkpoint (zip archive)"
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy .npz archive of " + ", ".join(sorted(n[:-4] for n in names)[:6])
    return "a zip archive"


def describe_file(source) -> str:
    """What the file at ``source`` (a path or a seekable binary file) looks like, from its first bytes."""
    head = _head(source)
    if head is None:
        return "an unreadable file"
    if not head:
        return "an empty file (0 bytes)"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(source)
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return f"a Python pickle (protocol {head[1]})"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8"):
        return "a JPEG image"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    readable = sum(c.isprintable() or c in "\t\n\r" for c in text)
    return "a text file" if readable >= 0.95 * len(text) else "unrecognised binary data"


def _name(source) -> str:
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<file object>"))
    return os.fsdecode(os.fspath(source)) if isinstance(source, (str, bytes, os.PathLike)) else repr(source)


def file_format_error(source, expected: str, error: BaseException | str | None = None, *,
                      hints: dict[str, str] | None = None) -> FileFormatError:
    """A :class:`FileFormatError` saying that ``source`` is not ``expected`` and what it looks like.

    ``hints`` maps the start of a :func:`describe_file` answer (``"a torch.save"``) to advice
    appended to the message.
    """
    why = f" ({type(error).__name__}: {error})" if isinstance(error, BaseException) else (f" ({error})" if error else "")
    if len(why) > 300:
        why = why[:297] + "...)"
    looks = describe_file(source)
    advice = next((f"; {text}" for start, text in (hints or {}).items() if looks.startswith(start)), "")
    return FileFormatError(f"{_name(source)}: not {expected}; it looks like {looks}{why}{advice}")


def torch_load_file(path, expected: str, *, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with any damage or foreign format mapped to a
    :class:`FileFormatError` naming ``expected`` (a missing file stays ``FileNotFoundError``)."""
    if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {os.fspath(path)} (smcdiff never downloads; pass a local file)")
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        raise FileFormatError(f"{os.fspath(path)}: is a folder, expected a file: {expected}")
    try:
        with warnings.catch_warnings():  # a foreign pickle is refused below with a clear message
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except READ_ERRORS as err:
        raise file_format_error(path, expected, err) from err
    except OSError as err:  # e.g. a read error inside the archive
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise file_format_error(path, expected, err) from err

