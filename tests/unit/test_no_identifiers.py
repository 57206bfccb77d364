"""Outputs name a scan by its scan_id, never by a path or a DICOM header field (ARCHITECTURE.md,
issue 11 item 4): a DICOM export in a folder named after the patient, with the patient's name, ID
and accession number in every header, goes through normalize, lungs, segment (the shipped demo
model, --record), morphometry and qc; no output file may hold any of those strings."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from hipas_core.io import read_ct, voxel_sha256
from hipas_core.writers import write_dicom_series

MODEL = Path(__file__).resolve().parents[2] / "models" / "sts-demo.pt"
IDENTIFIERS = ("DOE", "JANE", "ID12345", "07990")
LONG_IDENTIFIERS = tuple(i for i in IDENTIFIERS if len(i) >= 4)
"""Searched in voxel payloads as well: a 3-byte string such as DOE turns up by chance in a few MB
of float32 probabilities, a 4-byte one (1 in 4e9 per position) does not."""


def patient_export(root: Path) -> Path:
    """The tiny chest phantom as a DICOM series in DOE^JANE_ID12345/04-04-2007-NA-Chest-07990/,
    its headers carrying the patient's name, ID and the accession number."""
    import pydicom
    from test_dicom_exports import chest_phantom

    folder = root / "DOE^JANE_ID12345" / "04-04-2007-NA-Chest-07990"
    for file in write_dicom_series(chest_phantom(), folder):
        dataset = pydicom.dcmread(file)
        dataset.PatientName, dataset.PatientID, dataset.AccessionNumber = "DOE^JANE", "ID12345", "07990"
        dataset.StudyDescription = "Chest DOE JANE 07990"
        dataset.save_as(file)
    return folder


def _png_text(data: bytes) -> list[bytes]:
    """Every PNG chunk but the image data, text chunks decompressed."""
    parts, offset = [], 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IDAT":
            continue
        parts.append(body)
        if kind == b"zTXt":
            parts.append(zlib.decompress(body.split(b"\0", 1)[1][1:]))
        elif kind == b"iTXt" and body.split(b"\0", 1)[1][:1] == b"\1":
            parts.append(zlib.decompress(body.split(b"\0", 4)[-1]))
    return parts


def readable_parts(path: Path) -> tuple[list[bytes], list[bytes]]:
    """(headers and text, where any identifier is searched; voxel payloads, where the long ones
    are): the file's bytes as they are and as a reader decodes them (gzip, zip members, Parquet
    key-value metadata, PNG chunks)."""
    raw = path.read_bytes()
    texts, payloads = [], [raw]
    if raw[:2] == b"\x1f\x8b":  # .nii.gz: the NIfTI header and extensions, then voxels
        data = gzip.decompress(raw)
        nifti2 = int.from_bytes(data[:4], "little") == 540
        offset = struct.unpack("<q", data[168:176])[0] if nifti2 else int(struct.unpack("<f", data[108:112])[0])
        texts.append(data[:offset])
        payloads.append(data)
    elif raw[:4] == b"PK\x03\x04":  # .npz
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            texts.extend(name.encode() for name in archive.namelist())
            payloads.extend(archive.read(name) for name in archive.namelist())
    elif raw[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        texts.extend(k + b"=" + v for k, v in (table.schema.metadata or {}).items())
        texts.append(json.dumps(table.to_pylist(), default=str).encode())
    elif raw[:8] == b"\x89PNG\r\n\x1a\n":
        texts.extend(_png_text(raw))
    else:
        texts.append(raw)
    return texts, payloads


def assert_no_identifiers(folder: Path, *, paths: tuple[Path, ...] = ()) -> None:
    """No identifier in any file under ``folder``, nor (in headers and text) any of ``paths``."""
    found = []
    needles = IDENTIFIERS + tuple(str(p) for p in paths)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        texts, payloads = readable_parts(path)
        found += [(path.name, s) for s in needles for part in texts if s.encode() in part]
        found += [(path.name, s) for s in LONG_IDENTIFIERS for part in payloads if s.encode() in part]
    assert not found, f"identifiers in outputs: {sorted(set(found))}"


@pytest.mark.skipif(not MODEL.is_file(), reason="models/sts-demo.pt not present")
def test_outputs_of_every_stage_hold_no_path_or_patient_identifier(tmp_path, hipas):
    export = patient_export(tmp_path / "archive")
    out = tmp_path / "out"
    out.mkdir()
    scan = ("--scan-id", "S1")
    hipas("normalize", "-i", export, "-o", out / "ct.nii.gz", *scan, check=True)
    hipas("lungs", "-i", export, "-o", out / "lungs-input-grid.nii.gz", *scan, check=True)  # raw DICOM read
    hipas("lungs", "-i", out / "ct.nii.gz", "-o", out / "lungs.nii.gz", *scan, check=True)
    hipas("segment", "-i", out / "ct.nii.gz", "--record", out / "ct.json", "-o", out / "labels.nii.gz",
          "--std-output", out / "std.nii.gz", "--probabilities", out / "prob.nii.gz", "--device", "cpu",
          "--threads", "1", *scan, check=True)
    hipas("morphometry", "--labels", out / "std.nii.gz", "--lungs", out / "lungs.nii.gz", "-o", out / "row.parquet",
          "--skeleton", out / "skeleton.npz", *scan, check=True)
    hipas("qc", "-i", out / "ct.nii.gz", "--labels", out / "std.nii.gz", "-o", out / "qc.png", *scan, check=True)
    assert len(list(out.iterdir())) == 10
    record = json.loads((out / "ct.json").read_text())
    assert record["scan_id"] == "S1" and "input" not in record["hipas_parameters"]
    assert record["input_voxels_sha256"] == voxel_sha256(read_ct(export))
    assert_no_identifiers(out, paths=(tmp_path,))  # nor the working folder's path


def test_the_scan_itself_does_hold_the_identifiers(tmp_path):
    """The search finds what it looks for: the export's own files hold every identifier."""
    export = patient_export(tmp_path)
    with pytest.raises(AssertionError, match="ID12345"):
        assert_no_identifiers(export)


def test_exclusion_markers_hold_no_path(tmp_path, hipas):
    from test_dicom_exports import head_phantom

    folder = tmp_path / "DOE^JANE_ID12345" / "04-04-2007-NA-Head-07990"
    write_dicom_series(head_phantom(), folder)
    out = tmp_path / "out"
    hipas("lungs", "-i", folder, "-o", out / "lungs.nii.gz", "--scan-id", "S2", "--exclude-invalid", check=True)
    assert_no_identifiers(out)


def test_super_resolve_sidecar_holds_no_path(tmp_path, hipas):
    export = patient_export(tmp_path / "archive")
    out = tmp_path / "out"
    hipas("super-resolve", "-i", export, "-o", out / "sr.nii.gz", "--threshold-mm", "3", "--scan-id", "S1",
          check=True)  # 2.5 mm slices under a 3 mm threshold: copied through, no model run
    assert_no_identifiers(out)
