"""The ``hipas`` command: one console script, one module per command.

The top level only picks the command and imports its module lazily, so ``hipas morphometry``
never pays for importing torch. Each command module exposes ``build_parser(parser)`` and
``run(args) -> int``. User errors (``InvalidScanError``, ``InvalidInputError``) are printed as one
line on stderr and give exit status 2; the command modules write outputs atomically, so nothing
half-written is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hipas_core.errors import InvalidInputError, InvalidScanError

# command name -> (module under hipas_core.cli or a dotted path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("phantom", "write one synthetic chest-CT phantom with exact ground truth"),
    "phantom-cohort": ("phantom_cohort", "write a small multi-site demo cohort of phantoms"),
    "normalize": ("normalize", "resample a CT to the standardized grid"),
    "super-resolve": ("super_resolve", "I2SR: thick-slice CT to 1 mm slices"),
    "segment": ("segment", "STS artery/vein segmentation of a CT"),
    "import-labels": ("import_labels", "a scan's own artery/vein labels onto its standardized grid"),
    "lungs": ("lungs", "lung mask of a CT (lungmask or threshold)"),
    "morphometry": ("morphometry", "skeleton length, bifurcations, volumes of both trees"),
    "qc": ("qc", "a QC picture of a scan: orthogonal slices and a projection of both trees"),
    "levels": ("levels", "the paper's four branch levels from an artery/vein label map"),
    "evaluate": ("evaluate", "DSC, SEN, SPE, MCS, HD95, TD, BD of a prediction against truth"),
    "train": ("train", "train an STS cascade (or the single-stage baseline)"),
    "prepare-training": ("prepare_training", "one annotated CT (or phantom) as a prepared training case on disk"),
    "training-manifest": ("training_manifest", "the manifest (train/val/excluded) of prepared training cases"),
    "pretrain": ("pretrain", "masked-autoencoder pre-training of the STS stage encoder"),
    "train-i2sr": ("train_i2sr", "train (or evaluate) the I2SR slice super-resolution network"),
    "cohort-table": ("cohort_table", "join per-scan morphometry rows with site manifests"),
    "synth-cohort": ("synth_cohort", "a cohort table with planted effects"),
    "figure4": ("figure4", "Figure 4 tables and plots from a cohort table"),
    "phantom-truth": ("phantom_truth", "a phantom cohort's measured indices against the generator's truth"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hipas",
        description="HiPaS pulmonary artery/vein pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<15} {h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # started as the ``hipas`` command (not called from Python with arguments)
        from hipas_core.allocator import restart_with_tuned_allocator

        restart_with_tuned_allocator()  # at most once; before torch or numpy allocate anything
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from hipas_core import __version__

        print(f"hipas {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r} (see 'hipas --help')")
    module_name, help_line = COMMANDS[name]
    module = importlib.import_module(f"hipas_core.cli.{module_name}")
    parser = argparse.ArgumentParser(prog=f"hipas {name}", description=help_line)
    module.build_parser(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (InvalidScanError, InvalidInputError) as error:
        message = " ".join(str(error).split())
        print(f"hipas {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
