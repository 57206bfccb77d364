"""A prepared STS training case on disk: one folder per case, one ``.npy`` file per array.

``hipas prepare-training`` brings one annotated CT (or a phantom) through ``prepare_case``
(standardized grid, lung crop, HU window, vesselness, levels, territories, weights) and writes::

    <case folder>/
        case.json                 case id, format, arrays (shape, dtype), spacing (mm, (z, y, x)),
                                  protocol, source kind, lung box, the settings used, hipas version
        image.npy                 (2, Z, Y, X) float16: windowed CT in [0, 1] and its vesselness
        labels.npy                (Z, Y, X) uint8: 0 background, 1 artery, 2 vein
        levels.npy                (Z, Y, X) uint8: 0 background, 1..4 = level 0..3
        lungs.npy                 (Z, Y, X) uint8 lung mask
        territory.npy             (3, Z, Y, X) uint8: stage 1..3 territories (``level_territories``)
        weights.npy               (2, 4) float: w^i of eq. 15 per tree and level
        skeleton.npy              (Z, Y, X) uint8 tubed centrelines (Skeleton Recall targets)
        vessel_voxels.npy         (N,) int64 flat indices of the vessel voxels, grouped by level
        vessel_voxel_offsets.npy  (5,) int64 where each level's voxels start and end
        synthetic_ncct_image.npy  (2, Z, Y, X) float16, CTPA cases prepared with --synthetic-ncct
                                  only: the input channels of the synthetic non-contrast copy
                                  (``synthetic_ncct_case``), the variant ``--synthetic-ncct`` trains on

All arrays are in the standardized grid (``STANDARD_SPACING``), cropped to the lung box.

Why plain ``.npy`` files, one per array: numpy reads them without any further dependency;
``np.load(path, mmap_mode="r")`` maps them into memory without reading or copying them, so a
training process holds only the pages it touches and memory does not grow with the number of
cases (the page cache is shared by every worker and released under pressure); and a separate
file per array lets a data-loader worker touch only what it samples: the vessel-voxel index to
pick a centre, then the patch's slices of the image, labels, levels and territories. (A
compressed ``.npz`` would have to be decompressed whole; zarr or HDF5 would add a dependency.)

The folder is written under a temporary name beside its destination and renamed into place,
so a failed or killed run never leaves a case that looks finished. A case that cannot be
prepared (``--exclude-invalid``) is a folder holding only ``case.json`` as an exclusion marker
(``hipas_core.exclusion``, stage ``prepare-training``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from hipas_core.atomic import _umask
from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.exclusion import Exclusion, read_marker, write_marker
from hipas_core.sts.data import TrainingCase

FORMAT = "hipas-prepared-case/1"
RECORD = "case.json"
STAGE = "prepare-training"
SYNTHETIC_NCCT_IMAGE = "synthetic_ncct_image"


@contextlib.contextmanager
def atomic_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; on success it replaces
    ``destination`` (an existing folder is moved aside first and removed after), on any
    exception it is removed and ``destination`` is left as it was."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700; finished folders get the usual mode
        yield staging
        old = None
        if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            os.replace(destination, old / "case")
        os.replace(staging, destination)  # onto an empty folder (as Snakemake makes it) or none
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_prepared_case(
    case: TrainingCase, folder: str | os.PathLike, *, source: Mapping, settings: Mapping,
    synthetic_ncct_sigmas_mm: Sequence[float] | None = None,
) -> dict:
    """Write ``case`` (its centrelines and vessel-voxel index included) as a case folder;
    ``source``: what it was made from (``kind``: phantom, nifti, dicom, hipas_npz, itk; for
    phantoms seed, protocol and slice thickness; never an input path), ``settings``: the
    preparation settings. ``synthetic_ncct_sigmas_mm``: for a CTPA case, also store its
    synthetic-NCCT copy's input channels, vesselness at these scales (None: not stored).
    Returns the ``case.json`` record written."""
    from hipas_core import __version__
    from hipas_core.conventions import STANDARD_SPACING

    flat, offsets = case.level_voxels if case.level_voxels is not None else (None, None)
    if flat is None:
        case.vessel_voxels(1)
        flat, offsets = case.level_voxels
    arrays = {
        "image": case.image, "labels": case.labels, "levels": case.levels, "lungs": case.lungs,
        "territory": case.territory, "skeleton": case.centrelines(), "weights": case.weights,
        "vessel_voxels": flat, "vessel_voxel_offsets": offsets,
    }
    if synthetic_ncct_sigmas_mm is not None and case.meta.get("protocol") == "ctpa":
        from hipas_core.sts.data import synthetic_ncct_case

        arrays[SYNTHETIC_NCCT_IMAGE] = synthetic_ncct_case(
            case, vesselness_sigmas_mm=tuple(synthetic_ncct_sigmas_mm)).image
    record = {
        "format": FORMAT,
        "case_id": case.name,
        "shape": list(case.shape),
        "spacing_mm": list(STANDARD_SPACING),
        "protocol": case.meta.get("protocol"),
        "source": dict(source),
        "box": [list(pair) for pair in case.meta.get("box", [])],
        "meta": _json_ready(case.meta),
        "settings": _json_ready(dict(settings)),
        "arrays": {name: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)} for name, a in arrays.items()},
        "hipas_version": __version__,
    }
    with atomic_folder(folder) as staging:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (staging / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def write_excluded_case(folder: str | os.PathLike, exclusion: Exclusion) -> None:
    """A case folder holding only ``case.json`` as the exclusion marker of ``exclusion``."""
    with atomic_folder(folder) as staging:
        write_marker(staging / RECORD, exclusion)


def read_case_record(folder: str | os.PathLike) -> dict | Exclusion:
    """The ``case.json`` record of a case folder, or its ``Exclusion`` when it is excluded.
    ``InvalidInputError`` when the folder is not a prepared case."""
    path = Path(folder) / RECORD
    if not path.is_file():
        raise InvalidInputError(f"{folder}: not a prepared training case (no {RECORD})")
    excluded = read_marker(path)
    if excluded is not None:
        return excluded
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"{path}: unreadable case record ({type(error).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InvalidInputError(f"{path}: not a {FORMAT} record")
    return record


def load_prepared_case(folder: str | os.PathLike, *, mmap: bool = True) -> TrainingCase:
    """The ``TrainingCase`` of a case folder. ``mmap`` True: the volumes and the vessel-voxel
    index are read-only memory maps (nothing is read until a patch touches it); False: in memory.
    ``InvalidInputError`` for an excluded case, a missing file or an array that does not match
    its record."""
    folder = Path(folder)
    record = read_case_record(folder)
    if isinstance(record, Exclusion):
        raise InvalidInputError(f"{folder}: case {record.scan_id} is excluded ({record.reason})")
    arrays = {}
    for name, expected in record["arrays"].items():
        path = folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r" if mmap and name != "weights" else None, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path}: unreadable array ({type(error).__name__})") from None
        if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
            raise InvalidInputError(f"{path}: {array.dtype}{list(array.shape)}, the record says "
                                    f"{expected['dtype']}{expected['shape']}")
        arrays[name] = array
    meta = dict(record.get("meta", {}))
    if "box" in meta:
        meta["box"] = [tuple(pair) for pair in meta["box"]]
    case = TrainingCase(
        name=record["case_id"], image=arrays["image"], labels=arrays["labels"], levels=arrays["levels"],
        lungs=arrays["lungs"], territory=arrays["territory"], weights=arrays["weights"], meta=meta,
        skeleton=arrays.get("skeleton"),
        level_voxels=(arrays["vessel_voxels"], arrays["vessel_voxel_offsets"]),
    )
    if SYNTHETIC_NCCT_IMAGE in arrays:  # Augmentation.pick_case takes it instead of computing it
        from hipas_core.sts.data import synthetic_ncct_variant

        case.variants["synthetic_ncct"] = synthetic_ncct_variant(case, arrays[SYNTHETIC_NCCT_IMAGE])
    return case


def check_labels_on_ct_grid(ct, labels, *, labels_path: str | os.PathLike, require_voxels: bool = True) -> None:
    """``InvalidScanError`` (one line naming ``labels_path``) unless the label map (SimpleITK
    image) has the CT's size, spacing, origin and direction, and (``require_voxels``) holds at
    least one vessel voxel."""
    import SimpleITK as sitk

    from hipas_core.conventions import same_grid

    # the tolerances of hipas import-labels (hipas_core.label_import)
    if not same_grid(ct, labels, spacing_rtol=1e-4, origin_atol=1e-2, direction_atol=1e-4):
        raise InvalidScanError(f"{labels_path}: labels not on the CT grid (size {labels.GetSize()}, spacing "
                               f"{tuple(round(v, 4) for v in labels.GetSpacing())}, origin "
                               f"{tuple(round(v, 2) for v in labels.GetOrigin())} vs the CT's {ct.GetSize()}, "
                               f"{tuple(round(v, 4) for v in ct.GetSpacing())}, "
                               f"{tuple(round(v, 2) for v in ct.GetOrigin())}; x y z)")
    if require_voxels and not sitk.GetArrayViewFromImage(labels).any():
        raise InvalidScanError(f"{labels_path}: empty labels (no artery or vein voxel)")


def _json_ready(value):
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
