"""Options that ``hipas train`` and ``hipas pretrain`` share: inputs, run control, device."""

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
