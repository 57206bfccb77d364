"""The CSV training log beside a checkpoint (``run.pt`` -> ``run.log.csv``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["training_log_path", "write_training_log"]


def training_log_path(checkpoint: str | os.PathLike) -> Path:
    """The CSV training log beside a checkpoint: ``run.pt`` -> ``run.log.csv``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.log.csv")


def write_training_log(path: str | os.PathLike, history: Sequence[dict], throughput: Sequence[dict], *,
                       global_batch: int) -> None:
    """Write (atomically) one CSV row per step: ``step``, ``loss``, ``val_dice_artery``,
    ``val_dice_vein`` (empty where not validated), ``patches_per_s`` (the global batch over the
    step's wall time: waiting for the batch, moving it to the device, forward, backward, update;
    validation and checkpoints are not counted) and ``data_wait_fraction`` (the share of that
    time spent waiting for the batch)."""
    import csv
    import io

    from hipas_core.atomic import write_text

    timing = {int(t["step"]): t for t in throughput}
    columns = ("step", "loss", "val_dice_artery", "val_dice_vein", "patches_per_s", "data_wait_fraction")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in history:
        times = timing.get(int(record["step"]))
        seconds = times["seconds"] if times else None
        writer.writerow([
            record["step"], f"{record['loss']:.6g}",
            *(f"{record[k]:.6g}" if k in record else "" for k in ("val_dice_artery", "val_dice_vein")),
            f"{global_batch / seconds:.4g}" if seconds else "",
            f"{times['data_seconds'] / seconds:.4f}" if seconds else "",
        ])
    write_text(path, buffer.getvalue())
