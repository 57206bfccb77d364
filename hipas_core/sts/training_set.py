"""The manifest of a prepared training set: which case folders train, which validate, which
were excluded and why (``hipas training-manifest``; read by ``hipas train --prepared``).

A tab-separated file, one row per case folder (``hipas_core.sts.prepared``), in the order given:

=============  ===============================================================================
``case_id``     the case's id (its ``case.json``)
``folder``      the case folder, relative to the manifest's own folder (or absolute)
``split``       ``train``, ``val`` (held out, for the validation Dice) or ``excluded``
``shape``       ``ZxYxX`` voxels of the lung crop in the standardized grid (empty if excluded)
``spacing_mm``  ``z,y,x`` spacing of that grid, mm (empty if excluded)
``protocol``    ``ncct``, ``ctpa`` or empty when unknown
``source``      what the case was made from: phantom, nifti, dicom, hipas_npz, itk
``reason``      why an excluded case could not be prepared (empty otherwise)
=============  ===============================================================================
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hipas_core.errors import InvalidInputError
from hipas_core.exclusion import Exclusion
from hipas_core.sts.prepared import RECORD, read_case_record

COLUMNS = ("case_id", "folder", "split", "shape", "spacing_mm", "protocol", "source", "reason")
SPLITS = ("train", "val", "excluded")
MANIFEST_NAME = "manifest.tsv"  # the workflow's, beside its cases/ folder


@dataclass
class TrainingSet:
    """Case folders of a prepared training set by split; ``excluded``: (case id, reason)."""

    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)


def case_folders(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each path that is a case folder (holds ``case.json``), or else the case folders directly
    inside it (sorted by name). ``InvalidInputError`` for a path that is neither."""
    folders: list[Path] = []
    for given in paths:
        path = Path(given)
        if (path / RECORD).is_file():
            folders.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / RECORD).is_file()) if path.is_dir() else []
        if not inside:
            raise InvalidInputError(f"{path}: neither a prepared case folder nor a folder of them")
        folders.extend(inside)
    return folders


def build_manifest(folders: Sequence[str | os.PathLike], *, val_ids: Sequence[str] = (),
                   destination: str | os.PathLike) -> TrainingSet:
    """Write the manifest of ``folders`` (case folders, excluded ones included) to
    ``destination`` (atomically); ``val_ids``: the case ids held out for validation. Returns the
    training set it describes. ``InvalidInputError`` for a duplicate case id or a validation id
    that is not among the cases (or is excluded)."""
    from hipas_core.atomic import write_text

    destination = Path(destination)
    base = destination.resolve().parent
    wanted = {str(v) for v in val_ids}
    rows, seen, result = [], set(), TrainingSet()
    for folder in map(Path, folders):
        record = read_case_record(folder)
        case_id = record.scan_id if isinstance(record, Exclusion) else str(record["case_id"])
        if case_id in seen:
            raise InvalidInputError(f"{folder}: case id {case_id} appears twice in the training set")
        seen.add(case_id)
        where = os.path.relpath(folder.resolve(), base)
        if isinstance(record, Exclusion):
            if case_id in wanted:
                raise InvalidInputError(f"--val {case_id}: the case is excluded ({record.reason})")
            rows.append({"case_id": case_id, "folder": where, "split": "excluded", "reason": record.reason})
            result.excluded.append((case_id, record.reason))
            continue
        split = "val" if case_id in wanted else "train"
        rows.append({
            "case_id": case_id, "folder": where, "split": split,
            "shape": "x".join(str(s) for s in record["shape"]),
            "spacing_mm": ",".join(f"{s:.6g}" for s in record["spacing_mm"]),
            "protocol": record.get("protocol") or "", "source": record.get("source", {}).get("kind", ""),
        })
        (result.val if split == "val" else result.train).append(folder)
    missing = sorted(wanted - seen)
    if missing:
        raise InvalidInputError(f"--val {','.join(missing)}: no such case among the {len(seen)} given")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(destination, buffer.getvalue())
    return result


def read_manifest(path: str | os.PathLike) -> TrainingSet:
    """The training set a manifest describes (folders resolved against the manifest's folder).
    ``InvalidInputError`` (file and line) for a missing column, an unknown split or a folder
    that is not a prepared case."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read the training manifest ({error.strerror})") from None
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    missing = [c for c in ("case_id", "folder", "split") if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidInputError(f"{path}: not a training manifest (no column {', '.join(missing)})")
    result = TrainingSet()
    for line, row in enumerate(reader, start=2):
        split = row["split"]
        if split not in SPLITS:
            raise InvalidInputError(f"{path}: line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if split == "excluded":
            result.excluded.append((row["case_id"], row.get("reason") or ""))
            continue
        folder = (path.parent / row["folder"]).resolve() if not os.path.isabs(row["folder"]) else Path(row["folder"])
        if not (folder / RECORD).is_file():
            raise InvalidInputError(f"{path}: line {line}: {folder} is not a prepared case folder")
        (result.val if split == "val" else result.train).append(folder)
    if not result.train:
        raise InvalidInputError(f"{path}: no training case (split train)")
    return result


def resolve_training_set(path: str | os.PathLike) -> TrainingSet:
    """``hipas train --prepared``: a manifest file (its splits), a folder holding
    ``manifest.tsv`` (the workflow's ``results/training_set``: that manifest), a case folder, or
    a folder of case folders (every case that is not excluded trains; none validates)."""
    path = Path(path)
    if path.is_file():
        return read_manifest(path)
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME)
    result = TrainingSet()
    for folder in case_folders([path]):
        record = read_case_record(folder)
        if isinstance(record, Exclusion):
            result.excluded.append((record.scan_id, record.reason))
        else:
            result.train.append(folder)
    if not result.train:
        raise InvalidInputError(f"{path}: every prepared case in it is excluded")
    return result
