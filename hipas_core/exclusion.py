"""Exclusion markers: how a scan that cannot be processed travels through the workflow.

A per-scan command run with ``--exclude-invalid`` that meets an invalid scan (an
``InvalidScanError``), or an input that is itself an exclusion marker, writes every one of its
declared outputs as a small JSON marker instead of failing, and exits 0. Downstream stages
propagate the marker; the cohort step turns markers into rows of ``exclusions.csv``. A bug or an
out-of-memory is never turned into a marker: the job fails and is retried.

A marker is a JSON object ``{"hipas_exclusion": {"scan_id", "stage", "reason"}}`` written
atomically under the output's own name (so a marker named ``labels.nii.gz`` is not a NIfTI: no
reader mistakes it for one, and ``read_marker`` recognises it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hipas_core.atomic import write_text

_MAGIC = b'{"hipas_exclusion"'
_MAX_MARKER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Exclusion:
    scan_id: str
    stage: str
    reason: str


def write_marker(destination: str | os.PathLike, exclusion: Exclusion) -> None:
    """Write ``exclusion`` as a marker file at ``destination`` (atomically)."""
    write_text(destination, json.dumps({"hipas_exclusion": asdict(exclusion)}, sort_keys=True) + "\n")


def read_marker(path: str | os.PathLike) -> Exclusion | None:
    """The exclusion a marker file holds, or None when ``path`` is not a marker (or a folder)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > _MAX_MARKER_BYTES:
        return None
    with open(path, "rb") as handle:
        if handle.read(len(_MAGIC)) != _MAGIC:
            return None
    record = json.loads(path.read_text())["hipas_exclusion"]
    return Exclusion(scan_id=record["scan_id"], stage=record["stage"], reason=record["reason"])
