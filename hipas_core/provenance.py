"""Provenance stored beside results (Parquet key-value metadata, checkpoint fields)."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from typing import Any

from hipas_core import __version__

_TRACKED = ("numpy", "SimpleITK", "torch", "kimimaro", "lungmask", "scipy", "pyarrow")


def package_versions() -> dict[str, str]:
    """Versions of hipas and the libraries whose behaviour shapes the numbers."""
    versions = {"hipas": __version__, "python": platform.python_version()}
    for name in _TRACKED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: str | os.PathLike, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (model checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def provenance(**parameters: Any) -> dict[str, Any]:
    """A provenance record: package versions plus the given parameters (JSON-serialisable)."""
    return {"hipas_versions": package_versions(), "hipas_parameters": parameters}
