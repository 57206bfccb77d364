"""Atomic output: every file is written under a temporary name in its destination folder and
renamed into place, so a killed job never leaves a file that looks finished."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    The temporary name keeps the destination's suffixes (``.nii.gz``, ``.parquet``) so writers
    that choose a format by extension behave the same. On any exception the temporary file is
    removed and the destination is left untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name.split('.')[0]}.tmp-", suffix=suffix, dir=destination.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; finished files get the usual mode
    try:
        yield tmp
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(destination: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``destination`` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text)


def write_json(destination: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON atomically (deterministic bytes)."""
    write_text(destination, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_image(destination: str | os.PathLike, image) -> None:
    """Write a ``SimpleITK.Image`` atomically, compressed when the name ends in ``.gz``."""
    import SimpleITK as sitk

    with atomic_path(destination) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=str(destination).endswith(".gz"))


def write_image_and_sidecar(image_path: str | os.PathLike, image, sidecar_path: str | os.PathLike,
                            record: Any) -> None:
    """Write an image and its JSON sidecar so that both appear together: each is staged under a
    temporary name and both are renamed into place only after both were written."""
    with atomic_path(image_path) as staged_image, atomic_path(sidecar_path) as staged_sidecar:
        write_image(staged_image, image)
        write_json(staged_sidecar, record)


def write_parquet(destination: str | os.PathLike, frame, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a pandas DataFrame as Parquet atomically, with ``metadata`` as key-value metadata.

    Values that are not strings are stored as JSON. The index is not written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        extra = {
            str(k).encode(): (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=_json_default)).encode()
            for k, v in metadata.items()
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(destination) as tmp:
        pq.write_table(table, tmp)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata of a Parquet file, without pandas' own entry."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"pandas"}


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
