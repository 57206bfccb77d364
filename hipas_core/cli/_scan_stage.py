"""Shared handling of per-scan stages in the workflow: exclusion markers in and out."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from hipas_core.errors import InvalidScanError
from hipas_core.exclusion import Exclusion, read_marker, write_marker


def add_scan_stage_options(parser: argparse.ArgumentParser) -> None:
    """``--scan-id`` and ``--exclude-invalid``, the options every per-scan command shares."""
    parser.add_argument("--scan-id", help="identifier recorded in outputs (default: from the input name)")
    parser.add_argument(
        "--exclude-invalid",
        action="store_true",
        help="on an invalid scan (or an excluded input) write exclusion markers for every output "
        "and exit 0 instead of failing (used by the workflow)",
    )


def default_scan_id(path: str | Path) -> str:
    """``case01.nii.gz`` -> ``case01``; a DICOM folder -> its name."""
    return Path(path).name.split(".")[0]


def run_scan_stage(
    *,
    stage: str,
    scan_id: str,
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path | None],
    exclude_invalid: bool,
    work: Callable[[], None],
    write_exclusion: Callable[[Path, Exclusion], None] = write_marker,
) -> int:
    """Run ``work`` for one scan, honouring exclusion markers.

    An input that is an exclusion marker is propagated (with ``exclude_invalid``) or reported as
    an ``InvalidScanError``. An ``InvalidScanError`` from ``work`` becomes markers on every output
    with ``exclude_invalid``; otherwise it propagates (the CLI prints it and exits 2).
    ``write_exclusion`` writes one output of an excluded scan (default: a JSON marker; an end
    product nobody reads downstream, such as the QC picture, may show the reason instead).
    """
    targets = [Path(o) for o in outputs if o is not None]
    for path in inputs:
        upstream = read_marker(path)
        if upstream is None:
            continue
        if not exclude_invalid:
            raise InvalidScanError(f"{path}: scan excluded at stage {upstream.stage}: {upstream.reason}")
        for target in targets:
            write_exclusion(target, upstream)
        return 0
    try:
        work()
    except InvalidScanError as error:
        if not exclude_invalid:
            raise
        reason = _without_paths(" ".join(str(error).split()), inputs, scan_id)
        for target in targets:
            write_exclusion(target, Exclusion(scan_id=scan_id, stage=stage, reason=reason))
    return 0


def _without_paths(reason: str, inputs: Sequence[str | Path], scan_id: str) -> str:
    """``reason`` with every input path (and any path under an input folder) replaced by the
    scan's id: markers and exclusions.csv are outputs, and an export's folder names may carry a
    patient's name, ID or study date. The console line keeps the path (logs are the user's)."""
    for path in sorted({str(p) for p in inputs} | {str(Path(p).resolve()) for p in inputs}, key=len, reverse=True):
        if not path or path == ".":
            continue
        start = reason.find(path)
        while start >= 0:
            end = start + len(path)
            while end < len(reason) and not reason[end].isspace() and reason[end] != ":":
                end += 1  # a file inside an input folder: drop the rest of its path too
            reason = reason[:start] + f"<scan {scan_id}>" + reason[end:]
            start = reason.find(path)
    return reason
