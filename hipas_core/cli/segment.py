"""``hipas segment``: STS artery/vein labels of a CT, in the input's own grid.

    hipas segment -i CT -o LABELS.nii.gz [--model M] [--device auto|cpu|cuda] [--probabilities P.nii.gz]
                  [--record NORM.json] [--std-output STD.nii.gz] [--scan-id ID] [--protocol NCCT|CTPA]
                  [--exclude-invalid]
    hipas segment --batch SCANS.tsv [--model M] [--device cuda] [--exclude-invalid]

``--record``: the input is a CT already normalized by ``hipas normalize`` and NORM.json (its
sidecar) maps the labels back to the original grid. Without it the scan is normalized here as
``hipas normalize`` does: slices thicker than 2 mm through I2SR (``--i2sr-model``, default the
shipped ``i2sr-demo.pt``; ``none`` for trilinear z) and a sharp-kernel scan smoothed in-plane
(``--noise-harmonization``). ``--std-output``: also the labels in the
standardized grid the network worked in; measure those (``hipas morphometry``), not the
input-grid labels, for thick-slice scans: mapped to 2.5-5 mm slices, thin vessels are lost
(centerline length -12 to -19 % on a full phantom). ``--batch``: a tab-separated file with
columns input, output, optional record, optional scan_id, optional std_output, optional
protocol (an optional header row starting with ``input``); the model is loaded once for all rows.
``--protocol`` (a batch row's protocol): the scan's acquisition, NCCT or CTPA; a model whose
card has thresholds per protocol labels the scan at those (contrast makes the CTPA artery's
probabilities run higher), and without it at the model's default thresholds. In a batch an invalid scan gets exclusion
markers (with ``--exclude-invalid``) or an error line, and the other rows go on (exit 2 at the
end if any row failed). The model is ``--model``, else ``$HIPAS_MODEL``, else models/sts-demo.pt.

Progress goes to stderr: on a terminal a bar per cascade stage (windows done of how many), else
(a log, a workflow job) one line per step, ``ct.nii.gz: STS stage 2/4: windows 12/12 (8.1 s)``,
at most every 10 s and when the step ends; in a batch also ``scan k/N: ID``. ``--quiet`` (or
``HIPAS_PROGRESS=off``) leaves only the per-scan result line and errors.
"""

from __future__ import annotations

import argparse
import csv
import sys

from hipas_core.cli._scan_stage import add_scan_stage_options, default_scan_id, run_scan_stage
from hipas_core.conventions import PROTOCOLS
from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.resources import shipped_model


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", help="CT: DICOM folder, NIfTI, NRRD/MHA or HiPaS NPZ")
    parser.add_argument("-o", "--output", help="label map (.nii.gz): 0 background, 1 artery, 2 vein")
    parser.add_argument("--batch", help="TSV of scans: input, output, [record], [scan_id], [std_output], [protocol]")
    parser.add_argument("--model", help="STS checkpoint (default: $HIPAS_MODEL or models/sts-demo.pt)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu or cuda (default auto)")
    parser.add_argument("--probabilities", help="also write artery/vein probabilities (2-component float image)")
    parser.add_argument("--record", help="normalization record (hipas normalize's OUT.json): the input is already normalized")
    parser.add_argument("--std-output", help="also write the labels in the standardized grid (for morphometry)")
    parser.add_argument("--protocol", type=str.upper, choices=PROTOCOLS,
                        help="the scan's acquisition (any case): the model's thresholds for it where its card has "
                        "them (default: the model's default thresholds)")
    parser.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"), help="sliding window (default: the model's)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap fraction (default: the model's)")
    parser.add_argument("--window-batch", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="network arithmetic (default auto: on a CPU with native bf16, bf16 + channels-last, "
                        "2.4-2.8x faster than float32 with Dice within 0.015, benchmarks/bench_segment_cpu.py; "
                        "float32 on other CPUs; on CUDA bf16 where supported, else fp16)")
    parser.add_argument("--keep-outside-cavity", action="store_true",
                        help="keep predictions outside the thoracic cavity (default: removed; see the model card)")
    parser.add_argument("--branch-consistent", action=argparse.BooleanOptionalAction, default=None,
                        help="one class per skeleton branch (default: as the model's card says)")
    parser.add_argument("--attach-fragments", action=argparse.BooleanOptionalAction, default=None,
                        help="a small piece of one class that touches the other class's tree joins that "
                        "tree (hipas_core.sts.fragments; default: as the model's card says)")
    parser.add_argument("--i2sr-model", default=str(shipped_model("i2sr-demo.pt")),
                        help="without --record: I2SR checkpoint for slices thicker than 2 mm (default: the "
                        "shipped i2sr-demo.pt, as hipas normalize); 'none': trilinear z")
    parser.add_argument("--noise-harmonization", default="auto", choices=("auto", "off"),
                        help="without --record, as hipas normalize: 'auto' (default): a scan whose noise says it was reconstructed with a sharp (lung) kernel (hipas_core.noise: > 25 HU) is smoothed in-plane before resampling, as the model card says; 'off': never")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    add_scan_stage_options(parser)

def _read_batch(path: str) -> list[dict]:
    rows = []
    try:
        with open(path, newline="") as handle:
            for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if not row or not "".join(row).strip() or row[0].startswith("#"):
                    continue
                if number == 1 and row[0].strip().lower() == "input":
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise InvalidInputError(f"{path}: line {number} needs at least input and output columns")
                cells = [c.strip() for c in row] + ["", "", "", ""]
                protocol = cells[5].upper() or None
                if protocol is not None and protocol not in PROTOCOLS:
                    raise InvalidInputError(f"{path}: line {number}, column protocol: {cells[5]!r} is not "
                                            f"{' or '.join(PROTOCOLS)}")
                rows.append({"input": cells[0], "output": cells[1], "record": cells[2] or None, "scan_id": cells[3] or None,
                             "std_output": cells[4] or None, "protocol": protocol})
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: batch file not found") from None
    if not rows:
        raise InvalidInputError(f"{path}: batch file lists no scans")
    return rows

def _segment_one(predictor, *, input_path: str, output: str, record: str | None, probabilities: str | None,
                 std_output: str | None, scan_id: str, protocol: str | None, exclude_invalid: bool) -> int:
    from hipas_core.atomic import write_image

    def work() -> None:
        result = predictor.segment_file(input_path, record_path=record, probabilities=probabilities is not None,
                                        protocol=protocol)
        if probabilities is not None:
            write_image(probabilities, result.probabilities)
        if std_output is not None:
            write_image(std_output, result.standard_labels)
        write_image(output, result.labels)
        timing = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in result.timings.items())
        artery, vein = result.thresholds
        print(f"{scan_id}: {output} (thresholds artery {artery:g}, vein {vein:g}"
              f"{f' for {protocol}' if protocol else ''}; {timing})", file=sys.stderr)

    inputs = [input_path] + ([record] if record else [])
    return run_scan_stage(stage="segment", scan_id=scan_id, inputs=inputs, outputs=[output, probabilities, std_output],
                          exclude_invalid=exclude_invalid, work=work)

def run(args: argparse.Namespace) -> int:
    if bool(args.batch) == bool(args.input or args.output):
        raise InvalidInputError("give either -i CT -o LABELS or --batch FILE.tsv")
    if not args.batch and not (args.input and args.output):
        raise InvalidInputError("-i CT and -o LABELS are both required")
    if args.batch and (args.probabilities or args.record or args.scan_id or args.std_output or args.protocol):
        raise InvalidInputError("--probabilities, --record, --std-output, --scan-id and --protocol are per scan: "
                                "put them in the batch file")
    rows = _read_batch(args.batch) if args.batch else []  # the batch file checked before the model loads
    import torch

    from hipas_core.sts.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "off" if args.quiet else None
    predictor = Predictor(args.model, device=args.device, window=tuple(args.window) if args.window else None,
                          overlap=args.overlap, batch_size=args.window_batch, precision=args.precision,
                          confine=not args.keep_outside_cavity, branch_consistent=args.branch_consistent,
                          attach_fragments=args.attach_fragments, progress=mode,
                          i2sr_model=None if args.i2sr_model == "none" else args.i2sr_model,
                          noise_harmonization=args.noise_harmonization == "auto")
    if not args.batch:
        return _segment_one(predictor, input_path=args.input, output=args.output, record=args.record,
                            probabilities=args.probabilities, std_output=args.std_output,
                            scan_id=args.scan_id or default_scan_id(args.input), protocol=args.protocol,
                            exclude_invalid=args.exclude_invalid)
    from hipas_core.progress import log

    failures = 0
    for number, row in enumerate(rows, start=1):
        scan_id = row["scan_id"] or default_scan_id(row["input"])
        log(f"scan {number}/{len(rows)}: {scan_id}", mode=mode)
        try:
            _segment_one(predictor, input_path=row["input"], output=row["output"], record=row["record"],
                         probabilities=None, std_output=row["std_output"], scan_id=scan_id,
                         protocol=row["protocol"], exclude_invalid=args.exclude_invalid)
        except (InvalidScanError, InvalidInputError) as error:
            failures += 1
            print(f"hipas segment: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2 if failures else 0
