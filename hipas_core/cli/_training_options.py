"""Options that ``hipas train``, ``hipas pretrain`` and ``hipas prepare-training`` share: inputs,
run control, device, the I2SR model thick cases go through."""

from __future__ import annotations

import argparse

from hipas_core.conventions import DEMO_VESSELNESS_SIGMAS_MM


def add_training_run_options(parser: argparse.ArgumentParser) -> None:
    """--vesselness-sigmas, --checkpoint-every, --max-minutes, --device, --threads, --resume, --no-progress."""
    parser.add_argument("--vesselness-sigmas", type=float, nargs="+", default=DEMO_VESSELNESS_SIGMAS_MM, help="vesselness scales (mm)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this much training time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_i2sr_option(parser: argparse.ArgumentParser) -> None:
    """--i2sr-model: the I2SR checkpoint thick training cases are normalized through."""
    parser.add_argument("--i2sr-model", default=None, metavar="PT",
                        help="slices thicker than 2 mm are super-resolved through this I2SR checkpoint, as hipas "
                        "segment normalizes them (default: the shipped i2sr-demo.pt, the one hipas segment "
                        "uses); 'none': trilinear z (what training did until session 7)")


def i2sr_model_path(args: argparse.Namespace) -> str | None:
    """The I2SR checkpoint of ``--i2sr-model`` (None for 'none'), checked before any case is
    prepared: a file that is not an I2SR checkpoint fails here, naming it."""
    from hipas_core.resources import shipped_model
    from hipas_core.sts.data import loaded_i2sr_model

    if args.i2sr_model == "none":
        return None
    path = str(args.i2sr_model or shipped_model("i2sr-demo.pt"))
    loaded_i2sr_model(path)
    return path


def i2sr_record(path: str | None) -> dict | None:
    """What a checkpoint or case records of the I2SR model its thick cases went through."""
    from pathlib import Path

    from hipas_core.provenance import file_sha256

    if path is None:
        return None
    return {"file": Path(path).name, "sha256": file_sha256(path)}
