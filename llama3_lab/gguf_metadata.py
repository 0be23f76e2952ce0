"""GGUF metadata: the one reader of a llama.cpp file's key/value fields and tensor names.

The config reader (``loading/gguf_config.py``), the GGUF tokenizer (``tokenizer.GGUFByteBPETokenizer``) and
the weight loader (``loading/gguf.py``) all open and read GGUF files through here. Light to import: the
``gguf`` package (and numpy) is imported only when a file is opened.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["GGUFError", "GGUFMetadata", "open_gguf"]


class GGUFError(ValueError):
    """A file that is not a readable GGUF file (truncated, corrupt, or something else)."""


def open_gguf(path_or_reader: str | os.PathLike | Any) -> Any:
    """A ``gguf.GGUFReader`` for a path (an open reader passes through), with errors that name the file."""
    if hasattr(path_or_reader, "fields") and hasattr(path_or_reader, "tensors"):
        return path_or_reader
    path = Path(path_or_reader).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist.")
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/IndexError/struct errors on damaged files
        raise GGUFError(f"{path} is not a readable GGUF file (truncated or corrupt?): {e}") from e


class GGUFMetadata:
    """Key/value access to a GGUF file's metadata: an open ``GGUFReader`` or a dict of values already read.

    ``get`` gives plain Python values (str, int, float, lists of them); ``read(keys)`` copies some of them
    into a dict (JSON-serialisable, so it can be cached), which ``GGUFMetadata`` accepts again.
    """

    def __init__(self, source: str | os.PathLike | Any) -> None:
        self.values: dict[str, Any] | None = source if isinstance(source, dict) else None
        self.reader = None if self.values is not None else open_gguf(source)

    @property
    def source(self) -> str:
        """Where the metadata came from (the file's path when known)."""
        if self.values is not None:
            return str(self.values.get("path", "<gguf metadata>"))
        return str(getattr(self.reader, "path", None) or "<gguf reader>")

    def __contains__(self, key: str) -> bool:
        return key in (self.values if self.values is not None else self.reader.fields)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (arrays as lists), or ``default`` when the file does not have it."""
        if self.values is not None:
            return self.values.get(key, default)
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def array_length(self, key: str) -> int | None:
        """Number of elements of an array field without decoding them (None when absent)."""
        if self.values is not None:
            value = self.values.get(key)
            return None if value is None else len(value)
        field = self.reader.fields.get(key)
        return None if field is None else len(field.data)

    def read(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for those of ``keys`` the file has."""
        return {key: self.get(key) for key in keys if key in self}

    @property
    def tensor_names(self) -> set[str]:
        return set() if self.reader is None else {t.name for t in self.reader.tensors}

    def tensor(self, name: str) -> Any:
        """The raw data of tensor ``name`` (a numpy array, still quantised if the file quantises it)."""
        for tensor in [] if self.reader is None else self.reader.tensors:
            if tensor.name == name:
                return tensor.data
        raise KeyError(f"{self.source} has no tensor {name!r}.")
