"""Inference: a ``Predictor`` loads a checkpoint once and segments many scans.

Per scan: read (``hipas_core.io``), normalize to the standardized grid (or take an already
normalized CT plus its ``NormalizationRecord``), crop to the lung bounding box (with a margin),
window HU to [0, 1], vesselness (the model's scales), the cascade stage by stage with
sliding-window gaussian blending (stage i sees the blended probabilities of stage i-1 over the
whole crop), probabilities outside the thoracic cavity set to 0 (``hipas_core.lungs.thoracic_cavity``:
the lungs' per-slice convex hull widened by 3 mm, which holds the mediastinum, heart and great
vessels; a pulmonary vessel cannot lie elsewhere), probabilities mapped back to the input grid
linearly, per-class thresholds, artery and vein made exclusive (where both pass, the larger
probability wins; ties go to artery).
A CPU with native bf16 runs the network in bf16 on channels-last tensors, another CPU in float32;
CUDA under autocast (bf16 where supported, else fp16).
Progress (``hipas_core.progress``): each cascade stage counts its windows (a bar on a terminal,
``... STS stage 2/4: windows k/N (s)`` lines otherwise) and every other step of a scan
(normalize, lung box, vesselness, branch labels, mapping back) reports a line when done.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hipas_core.allocator import release_free_memory
from hipas_core.conventions import (
    ARTERY,
    DEMO_VESSELNESS_SIGMAS_MM,
    PROTOCOLS,
    STANDARD_SPACING,
    VEIN,
    is_standard_grid,
    resolve_device,
)
from hipas_core.errors import InvalidInputError, InvalidScanError
from hipas_core.progress import Progress, stage
from hipas_core.resources import shipped_model
from hipas_core.sts.checkpoint import load_checkpoint, model_from_checkpoint
from hipas_core.sts.network import SIZE_MULTIPLE
from hipas_core.sts.sliding_window import fitted_window, sliding_window_predict, window_starts

DEFAULT_MODEL_NAME = "sts-demo.pt"
MODEL_ENV = "HIPAS_MODEL"
LUNG_MARGIN_MM = 10.0


def default_model_path() -> Path:
    """``$HIPAS_MODEL`` if set, else the shipped ``sts-demo.pt`` (``hipas_core.resources``)."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    return shipped_model(DEFAULT_MODEL_NAME)


# 0.10-0.95 in steps of 0.05, then finer near 1, where over-confident networks (Dice +
# cross-entropy on a small budget) can have their best threshold
THRESHOLD_GRID = tuple(round(0.1 + 0.05 * k, 2) for k in range(18)) + (0.97, 0.98, 0.99)


def calibrate_thresholds(predictor: Predictor, scans, *, grid=THRESHOLD_GRID) -> tuple[float, float]:
    """Per-class thresholds maximising the pooled Dice of artery and of vein over ``scans``.

    ``scans``: (ct, truth) pairs, a ``SimpleITK.Image`` CT in HU and its (Z, Y, X) label array
    (1 artery, 2 vein) in the CT's own grid. Each CT is segmented as ``hipas segment`` does it
    (normalize, lung crop, all stages, probabilities mapped back linearly to the input grid),
    so the thresholds fit the maps they are applied to: interpolation to the input grid lowers
    the peaks of thin vessels, and thresholds chosen in the standardized grid came out too high.
    Use validation scans, never the held-out test scans.
    """
    import SimpleITK as sitk

    grid = np.asarray(grid, dtype=float)
    inter = np.zeros((2, len(grid)))
    total = np.zeros((2, len(grid)))
    for ct, truth in scans:
        probs = sitk.GetArrayFromImage(predictor.segment(ct, probabilities=True).probabilities)  # (Z, Y, X, 2)
        for tree, value in enumerate((ARTERY, VEIN)):  # probability channels: artery, vein
            wanted = truth == value
            for k, t in enumerate(grid):
                pred = probs[..., tree] > t
                inter[tree, k] += np.count_nonzero(pred & wanted)
                total[tree, k] += np.count_nonzero(pred) + np.count_nonzero(wanted)
    dice = 2 * inter / np.maximum(total, 1)
    return tuple(float(round(grid[int(np.argmax(dice[tree]))], 3)) for tree in range(2))


def pooled_dice(predictor: Predictor, scans) -> tuple[float, float]:
    """Pooled Dice of artery and of vein of ``predictor``'s labels over ``scans`` ((CT image,
    truth array) pairs as for ``calibrate_thresholds``), in each CT's own grid."""
    import SimpleITK as sitk

    inter, total = np.zeros(2), np.zeros(2)
    for ct, truth in scans:
        labels = sitk.GetArrayFromImage(predictor.segment(ct).labels)
        for tree, value in enumerate((ARTERY, VEIN)):
            pred, wanted = labels == value, truth == value
            inter[tree] += np.count_nonzero(pred & wanted)
            total[tree] += np.count_nonzero(pred) + np.count_nonzero(wanted)
    dice = 2 * inter / np.maximum(total, 1)
    return float(dice[0]), float(dice[1])


def _threshold_pair(pair) -> tuple[float, float] | None:
    """``pair`` as (artery, vein) floats if it is two thresholds in (0, 1), else None."""
    try:
        values = tuple(float(t) for t in pair)
    except (TypeError, ValueError):
        return None
    return values if len(values) == 2 and all(0.0 < t < 1.0 for t in values) else None


def protocol_thresholds(table, *, source) -> dict[str, tuple[float, float]]:
    """A checkpoint's ``inference["thresholds_by_protocol"]`` ({protocol: [artery, vein]}) checked:
    protocols from ``conventions.PROTOCOLS`` (any case; keys returned upper case), two
    thresholds in (0, 1) each. ``InvalidInputError`` naming ``source`` otherwise."""
    if not isinstance(table, dict):
        raise InvalidInputError(f"{source}: inference thresholds_by_protocol is not a table of protocols")
    checked = {}
    for protocol, pair in table.items():
        key = str(protocol).strip().upper()
        values = _threshold_pair(pair)
        if key not in PROTOCOLS or values is None:
            raise InvalidInputError(f"{source}: inference thresholds_by_protocol {protocol!r}: {pair!r} is not "
                                    f"a protocol ({', '.join(PROTOCOLS)}) with two thresholds in (0, 1)")
        checked[key] = values
    return checked


def slice_thickness_thresholds(rules, *, source) -> list[tuple[float, str | None, tuple[float, float]]]:
    """A checkpoint's ``inference["thresholds_by_slice_thickness"]`` checked: a list of rules
    ``{"min_slice_thickness_mm": T, "protocol": P (optional), "thresholds": [artery, vein]}``,
    T >= 0 mm, P from ``conventions.PROTOCOLS`` (any case), thresholds in (0, 1). Returns
    ``(T, P upper case or None, (artery, vein))`` per rule; ``InvalidInputError`` naming
    ``source`` otherwise (also for two rules with the same T and P)."""
    if not isinstance(rules, list):
        raise InvalidInputError(f"{source}: inference thresholds_by_slice_thickness is not a list of rules")
    checked, seen = [], set()
    for rule in rules:
        try:
            minimum = float(rule["min_slice_thickness_mm"])
            protocol = rule.get("protocol")
            protocol = None if protocol is None else str(protocol).strip().upper()
            values = _threshold_pair(rule["thresholds"])
            valid = (set(rule) <= {"min_slice_thickness_mm", "protocol", "thresholds"} and minimum >= 0.0
                     and protocol in (None, *PROTOCOLS) and values is not None)
        except (AttributeError, KeyError, TypeError, ValueError):
            valid = False
        if not valid or (minimum, protocol) in seen:
            raise InvalidInputError(f"{source}: inference thresholds_by_slice_thickness rule {rule!r} is not "
                                    "{min_slice_thickness_mm: mm >= 0, protocol (optional, one of "
                                    f"{', '.join(PROTOCOLS)}), thresholds: two in (0, 1)}} once per thickness and protocol")
        seen.add((minimum, protocol))
        checked.append((minimum, protocol, values))
    return checked


def exclusive_labels(probabilities, thresholds=(0.5, 0.5)) -> np.ndarray:
    """(2, ...) artery/vein probabilities (an array, or a pair of equal-shape arrays) -> uint8
    labels (0 bg, 1 artery, 2 vein), exclusive."""
    artery_p, vein_p = probabilities[0], probabilities[1]
    artery = artery_p > thresholds[0]
    vein = vein_p > thresholds[1]
    labels = np.zeros(artery.shape, dtype=np.uint8)
    labels[artery] = ARTERY
    labels[vein] = VEIN
    vein &= artery  # where both pass
    vein &= artery_p >= vein_p
    labels[vein] = ARTERY
    return labels


@dataclass
class Segmentation:
    """Result of one scan: labels (and probabilities when asked) in the input grid, and the
    labels in the standardized grid the network worked in (``standard_labels``: what morphometry
    should measure; mapped to a thick-slice input grid, thin vessels are lost)."""

    labels: object  # SimpleITK uint8
    probabilities: object | None  # SimpleITK 2-component float32 vector image (artery, vein)
    timings: dict = field(default_factory=dict)
    standard_labels: object | None = None  # SimpleITK uint8 on the standardized grid
    thresholds: tuple[float, float] = (0.5, 0.5)  # (artery, vein) the labels were thresholded at


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX tiles), where oneDNN's bf16
    convolutions beat float32; without it bf16 is emulated and slower."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


class Predictor:
    """Loads a checkpoint once; ``segment(ct_image)`` / ``segment_file(path)`` per scan.

    ``window`` (z, y, x) and ``overlap`` default to the checkpoint's inference settings;
    the per-class thresholds (artery, vein) are the checkpoint's ``inference["thresholds"]``,
    or for a scan whose ``protocol`` (``segment(..., protocol="CTPA")``) is in its
    ``inference["thresholds_by_protocol"]`` those, or for a scan whose slices are at least as
    thick as a rule of ``inference["thresholds_by_slice_thickness"]`` says that rule's
    (``thresholds_for``);
    ``device`` "cpu", "cuda" or "auto" (cuda when available); ``batch_size`` windows per forward
    pass. A crop smaller than the window is run as one window of its own size, and a longer axis
    with the smallest window that tiles it in as many windows at ``overlap`` (``fitted_window``).
    ``confine`` (default True) removes predictions outside the thoracic cavity.
    ``noise_harmonization`` (default True): a raw scan (no record) with a sharp kernel's noise is
    smoothed in-plane before normalization, as ``hipas normalize`` does (``hipas_core.noise``).
    ``branch_consistent`` (default: the checkpoint's ``inference["branch_consistent"]``, else
    False) gives every skeleton branch one class (``hipas_core.sts.branch_labels``, with
    ``branch_coupling`` between branches that meet, default the checkpoint's, else 0): where a
    branch's voxels change class, their artery and vein probabilities are swapped, so the labels
    in both grids follow. ``attach_fragments`` (default: the checkpoint's
    ``inference["attach_fragments"]``, else False): after that, a small piece of one class that
    touches the other class's tree takes the other class (``hipas_core.sts.fragments``), its
    probabilities swapped the same way. ``progress``: ``hipas_core.progress`` mode (default: bar on a terminal,
    else log lines; ``"off"`` for none). ``precision``: ``"auto"`` (on a CPU that computes
    bf16 natively, ``cpu_has_native_bf16``, bf16 with channels-last tensors, else float32; on
    CUDA bf16 where supported, else fp16), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
    ``channels_last`` (default: on where ``"auto"`` chose bf16 on a CPU) runs the network on
    channels-last tensors (``benchmarks/bench_segment_precision.py`` measures layout and precision
    on CPU: bf16 + channels-last 2.4-2.8x faster network stages, Dice within 0.015).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        window: tuple[int, int, int] | None = None,
        overlap: float | None = None,
        batch_size: int = 1,
        precision: str = "auto",
        confine: bool = True,
        branch_consistent: bool | None = None,
        branch_coupling: float | None = None,
        attach_fragments: bool | None = None,
        progress: str | None = None,
        i2sr_model: str | os.PathLike | None = None,
        channels_last: bool | None = None,
        noise_harmonization: bool = True,
    ) -> None:
        self.confine = bool(confine)
        self.noise_harmonization = bool(noise_harmonization)
        # a raw scan (no record) with thick slices is normalized through this I2SR checkpoint, as
        # hipas normalize does; None: trilinear z
        self.i2sr_model_path = None if i2sr_model is None else Path(i2sr_model)
        self._i2sr = None
        self.progress = progress
        self._label = ""  # the scan being segmented, at the start of its progress lines
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        payload = load_checkpoint(self.model_path, kind=("cascade", "baseline"))
        device = resolve_device(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidInputError(f"--device {device}: CUDA is not available on this machine")
        self.device = torch.device(device)
        self.kind = payload["kind"]
        self.model = model_from_checkpoint(payload, source=self.model_path).to(self.device)
        inference = payload.get("inference", {})
        self.window = tuple(int(w) for w in (window or inference.get("window", (128, 192, 192))))
        if any(w % SIZE_MULTIPLE for w in self.window):
            raise InvalidInputError(f"window {self.window} must be multiples of {SIZE_MULTIPLE}")
        self.overlap = float(inference.get("overlap", 0.25) if overlap is None else overlap)
        self.thresholds = tuple(float(t) for t in inference.get("thresholds", (0.5, 0.5)))
        self.thresholds_by_protocol = protocol_thresholds(inference.get("thresholds_by_protocol", {}),
                                                          source=self.model_path)
        self.thresholds_by_slice_thickness = slice_thickness_thresholds(
            inference.get("thresholds_by_slice_thickness", []), source=self.model_path)
        self.branch_consistent = bool(inference.get("branch_consistent", False) if branch_consistent is None
                                      else branch_consistent)
        self.branch_coupling = float(inference.get("branch_coupling", 0.0) if branch_coupling is None
                                     else branch_coupling)
        self.attach_fragments = bool(inference.get("attach_fragments", False) if attach_fragments is None
                                     else attach_fragments)
        self.vesselness_sigmas_mm = tuple(inference.get("vesselness_sigmas_mm", DEMO_VESSELNESS_SIGMAS_MM))
        self.batch_size = int(batch_size)
        native_bf16 = precision == "auto" and self.device.type == "cpu" and cpu_has_native_bf16()
        if precision == "auto":
            if self.device.type == "cpu":
                precision = "bf16" if native_bf16 else "fp32"
            else:
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision not in ("fp32", "bf16", "fp16"):
            raise InvalidInputError(f"precision {precision!r}: auto, fp32, bf16 or fp16")
        # channels-last tensors (oneDNN's 3D convolutions on CPU; same values to float rounding)
        self.channels_last = native_bf16 if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.precision = precision
        self.checkpoint_info = {k: payload.get(k) for k in ("kind", "model_config", "inference", "step")}

    def thresholds_for(self, protocol: str | None, *, slice_thickness_mm: float | None = None) -> tuple[float, float]:
        """(artery, vein) thresholds for a scan of ``protocol`` (``"NCCT"`` or ``"CTPA"``, any
        case; None: not known) whose original slices are ``slice_thickness_mm`` thick (None: not
        known): of the checkpoint's slice-thickness rules that apply (the scan's slices at least
        the rule's minimum, the rule's protocol the scan's or none), the one with the largest
        minimum, a rule naming the protocol before one that does not; else the checkpoint's
        thresholds for that protocol, else its default ones."""
        key = None
        if protocol is not None:
            key = str(protocol).strip().upper()
            if key not in PROTOCOLS:
                raise InvalidInputError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
        if slice_thickness_mm is not None:
            applying = [(minimum, rule_protocol is not None, pair)
                        for minimum, rule_protocol, pair in self.thresholds_by_slice_thickness
                        if minimum <= float(slice_thickness_mm) + 1e-6 and rule_protocol in (None, key)]
            if applying:
                return max(applying, key=lambda rule: rule[:2])[2]
        if key is None:
            return self.thresholds
        return self.thresholds_by_protocol.get(key, self.thresholds)

    # ---- arrays in the standardized grid --------------------------------------------------
    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def _stage(self, description: str):
        """A progress line for one step of the scan being segmented."""
        return stage(f"{self._label}{description}", mode=self.progress)

    @torch.no_grad()
    def predict_probabilities(self, ct_window: np.ndarray, *, timings: dict | None = None) -> np.ndarray:
        """(Z, Y, X) windowed CT in [0, 1] on the standardized grid -> (2, Z, Y, X) float32
        artery/vein probabilities (vesselness and all stages included)."""
        from hipas_core.vesselness import vesselness

        timings = {} if timings is None else timings
        started = time.perf_counter()
        with self._stage("vesselness"):
            volume = torch.from_numpy(np.ascontiguousarray(ct_window, dtype=np.float32)).to(self.device)
            enhanced = vesselness(volume, spacing=STANDARD_SPACING, sigmas_mm=self.vesselness_sigmas_mm)
            image = torch.stack([volume, enhanced])
            del volume, enhanced  # (the caller may hand over its only reference to ct_window too)
        timings["vesselness_s"] = time.perf_counter() - started
        return self.probabilities_from_channels(image, timings=timings)

    @torch.no_grad()
    def probabilities_from_channels(self, image: torch.Tensor, *, timings: dict | None = None) -> np.ndarray:
        """(2, Z, Y, X) tensor (windowed CT, vesselness) -> (2, Z, Y, X) float32 probabilities."""
        timings = {} if timings is None else timings
        image = image.to(self.device, torch.float32)
        if self.kind == "baseline":
            started = time.perf_counter()
            probs = self._slide(lambda x: torch.sigmoid(self.model(x).float()), image, description=f"{self._label}U-Net")
            timings["stage0_s"] = time.perf_counter() - started
            return probs.cpu().numpy()
        from hipas_core.sts.cascade import cascade_probabilities

        clock = [time.perf_counter()]

        def stage_done(index: int) -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            release_free_memory()  # this stage's activations are not the next one's sizes
            now = time.perf_counter()
            timings[f"stage{index}_s"], clock[0] = now - clock[0], now

        stages, numbers = len(self.model.stages), itertools.count(1)

        def slide(fn, volume: torch.Tensor) -> torch.Tensor:
            return self._slide(fn, volume, description=f"{self._label}STS stage {next(numbers)}/{stages}")

        return cascade_probabilities(self.model, image, slide=slide, on_stage=stage_done).cpu().numpy()

    def _slide(self, fn, volume: torch.Tensor, *, description: str = "sliding window") -> torch.Tensor:
        window = fitted_window(self.window, tuple(volume.shape[1:]), overlap=self.overlap)
        # the windows sliding_window_predict visits (it pads a volume smaller than the window)
        total = math.prod(len(window_starts(max(s, w), w, self.overlap)) for s, w in zip(volume.shape[1:], window, strict=True))
        with Progress(description, total=total, unit="windows", mode=self.progress) as progress:

            def counted(batch: torch.Tensor) -> torch.Tensor:
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last_3d)
                result = fn(batch)
                if result.is_cuda:  # count windows done, not windows queued
                    torch.cuda.synchronize(result.device)
                progress.update(len(batch))
                return result

            with self._autocast():
                return sliding_window_predict(
                    counted, volume, window=window, overlap=self.overlap, batch_size=self.batch_size, out_channels=2
                )

    def _i2sr_for(self, ct_image):
        """The I2SR model when ``ct_image`` has slices thicker than the I2SR threshold (loaded once)."""
        from hipas_core.conventions import I2SR_THICKNESS_MM, needs_super_resolution
        from hipas_core.normalize import slice_thickness_mm

        if self.i2sr_model_path is None or not needs_super_resolution(slice_thickness_mm(ct_image), I2SR_THICKNESS_MM):
            return None
        if self._i2sr is None:
            from hipas_core.i2sr import load_model

            self._i2sr = load_model(self.i2sr_model_path, device=self.device.type)
        return self._i2sr

    # ---- images ------------------------------------------------------------------------
    def segment(self, ct_image, *, record=None, probabilities: bool = False, source: str = "input",
                protocol: str | None = None, thresholds: tuple[float, float] | None = None) -> Segmentation:
        """Segment a CT (``SimpleITK.Image`` in HU). Without ``record`` the CT is any scan and is
        normalized here; with ``record`` (a ``NormalizationRecord``) it is already normalized and
        the record maps the result back to the original grid. ``protocol`` (``"NCCT"`` or
        ``"CTPA"``, any case; None: not known) and the original slice thickness (the record's,
        else ``ct_image``'s) pick the thresholds (``thresholds_for``), unless ``thresholds``
        (artery, vein) are given: then those, whatever the checkpoint says.
        Returns labels (and optionally probabilities) in the input grid, and the labels in the
        standardized grid. ``InvalidScanError`` when no lungs are found. Progress lines start
        with ``source``'s file name (none for the default ``"input"``)."""
        if thresholds is None:
            from hipas_core.normalize import slice_thickness_mm

            thickness = record.slice_thickness_mm if record is not None else slice_thickness_mm(ct_image)
            thresholds = self.thresholds_for(protocol, slice_thickness_mm=thickness)
        else:
            thresholds = tuple(float(t) for t in thresholds)
        self._label = "" if source == "input" else f"{Path(source).name}: "
        try:
            return self._segment(ct_image, record=record, probabilities=probabilities, source=source,
                                 thresholds=thresholds)
        finally:
            self._label = ""

    def _segment(self, ct_image, *, record, probabilities: bool, source: str,
                 thresholds: tuple[float, float]) -> Segmentation:
        """``segment`` itself."""
        import SimpleITK as sitk

        from hipas_core.lungs import lung_bounding_box, lung_box_and_cavity
        from hipas_core.normalize import normalize_ct, to_input_grid, window

        timings: dict = {}
        started = time.perf_counter()
        if record is None:
            with self._stage("normalize"):
                standard, record = normalize_ct(ct_image, i2sr_model=self._i2sr_for(ct_image),
                                                device=self.device.type, noise_harmonization=self.noise_harmonization)
        else:
            spacing = ct_image.GetSpacing()[::-1]
            if not is_standard_grid(ct_image, rtol=1e-5, atol=1e-3):
                raise InvalidScanError(f"{source}: --record given but the CT is not on the standardized grid (spacing {spacing})")
            standard = ct_image
        timings["normalize_s"] = time.perf_counter() - started
        started = time.perf_counter()
        try:
            with self._stage("lung box" + (" and thoracic cavity" if self.confine else "")):
                if self.confine:  # the box and the cavity come from one pass over the scan's air
                    box, cavity = lung_box_and_cavity(standard, margin_mm=LUNG_MARGIN_MM)
                else:
                    box, cavity = lung_bounding_box(standard, margin_mm=LUNG_MARGIN_MM), None
        except InvalidScanError as error:
            raise InvalidScanError(f"{source}: {error}") from None
        if cavity is not None:
            cavity = cavity[box].copy()  # not a view that keeps the whole scan's mask alive
            timings["cavity_s"] = time.perf_counter() - started
        ct_window = window(sitk.GetArrayViewFromImage(standard)[box])
        # the standardized CT is not needed past its crop: keep its grid only (a one-voxel image
        # with its origin, spacing and direction, and its shape), not its voxels, while the
        # network runs
        full_shape = sitk.GetArrayViewFromImage(standard).shape
        grid = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        grid.SetOrigin(standard.GetOrigin())
        grid.SetSpacing(standard.GetSpacing())
        grid.SetDirection(standard.GetDirection())
        del standard
        release_free_memory()  # the whole-scan lung masks and the standardized CT are gone
        probs_crop = self.predict_probabilities(ct_window, timings=timings)
        del ct_window
        if cavity is not None:
            probs_crop *= cavity
            del cavity
        labels_crop = exclusive_labels(probs_crop, thresholds)
        if self.branch_consistent or self.attach_fragments:
            started = time.perf_counter()
            steps = [name for name, on in (("branch labels", self.branch_consistent),
                                           ("tree fragments", self.attach_fragments)) if on]
            with self._stage(" and ".join(steps)):
                relabelled = labels_crop
                if self.branch_consistent:
                    from hipas_core.sts.branch_labels import branch_consistent_labels

                    relabelled = branch_consistent_labels(probs_crop, relabelled, coupling=self.branch_coupling)
                if self.attach_fragments:
                    from hipas_core.sts.fragments import attach_fragments

                    relabelled = attach_fragments(relabelled)
                flipped = (relabelled != labels_crop) & (labels_crop > 0)
                probs_crop[0][flipped], probs_crop[1][flipped] = probs_crop[1][flipped], probs_crop[0][flipped]
                # the labels are taken as relabelled, not thresholded again from the swapped
                # probabilities (with unequal class thresholds a swapped voxel could fall below one)
                labels_crop = relabelled
                del flipped
            timings["branches_s"] = time.perf_counter() - started
        started = time.perf_counter()
        with self._stage("labels and probabilities to the input grid"):
            standard_array = np.zeros(full_shape, dtype=np.uint8)
            standard_array[box] = labels_crop
            del labels_crop
            standard_labels = sitk.GetImageFromArray(standard_array)
            standard_labels.SetOrigin(grid.GetOrigin())
            standard_labels.SetSpacing(grid.GetSpacing())
            standard_labels.SetDirection(grid.GetDirection())
            del standard_array
            # only the crop is mapped back (outside it every probability is 0): the standardized
            # grid of a full-size scan never holds a float copy of its own
            crop_origin = grid.TransformIndexToPhysicalPoint(tuple(int(b.start) for b in box[::-1]))
            channels = []
            for channel in range(2):
                image = sitk.GetImageFromArray(probs_crop[channel])
                image.SetSpacing(grid.GetSpacing())
                image.SetDirection(grid.GetDirection())
                image.SetOrigin(crop_origin)
                channels.append(to_input_grid(image, record, interpolation="linear"))
            del probs_crop
            labels = sitk.GetImageFromArray(
                exclusive_labels([sitk.GetArrayViewFromImage(c) for c in channels], thresholds))
            labels.CopyInformation(channels[0])
            prob_image = None
            if probabilities:
                prob_image = sitk.Compose([sitk.Cast(c, sitk.sitkFloat32) for c in channels])
        timings["to_input_grid_s"] = time.perf_counter() - started
        return Segmentation(labels=labels, probabilities=prob_image, timings=timings, standard_labels=standard_labels,
                            thresholds=thresholds)

    def segment_file(self, path: str | os.PathLike, *, record_path: str | os.PathLike | None = None,
                     probabilities: bool = False, protocol: str | None = None,
                     thresholds: tuple[float, float] | None = None) -> Segmentation:
        """Read ``path`` (any CT ``hipas_core.io.read_ct`` reads) and segment it (``protocol``,
        ``thresholds``: as for ``segment``)."""
        from hipas_core.io import read_ct

        record = None
        if record_path is not None:
            from hipas_core.normalize import NormalizationRecord

            try:
                record = NormalizationRecord.from_json(Path(record_path).read_text())
            except FileNotFoundError:
                raise InvalidInputError(f"{record_path}: normalization record not found") from None
            except (ValueError, KeyError, TypeError) as error:
                raise InvalidInputError(f"{record_path}: not a normalization record ({error})") from None
        started = time.perf_counter()
        image = read_ct(path)
        result = self.segment(image, record=record, probabilities=probabilities, source=str(path), protocol=protocol,
                              thresholds=thresholds)
        result.timings["read_s"] = time.perf_counter() - started - sum(result.timings.values())
        return result
