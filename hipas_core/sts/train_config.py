"""``TrainConfig``: every setting of an STS (or baseline) training run; stored in its checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from hipas_core.conventions import DEMO_VESSELNESS_SIGMAS_MM
from hipas_core.sts.data import Augmentation

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    kind: str = "cascade"  # or "baseline"
    model_config: dict = field(default_factory=dict)
    patch: tuple[int, int, int] = (128, 192, 192)  # (z, y, x); paper 192 x 192 x 128
    batch_size: int = 1
    steps: int = 1000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.99, 0.999)
    mode: str = "joint"  # or "stagewise" (cascade only)
    warm_start: bool = True  # stagewise: stage s starts from stage s-1's weights
    stage_steps: tuple[int, ...] | None = None  # stagewise: steps per stage (default: steps split evenly)
    seed: int = 0
    vessel_probability: float = 0.7
    level_weight_cap: float | None = None  # None: eq. 15 exactly
    bce_weight: float = 0.0  # cascade: weight of an added cross-entropy term (0: eq. 17 exactly)
    # "paper": eq. 17 per stage; "dice": plain soft Dice per tree on the stage's targets (levels
    # <= stage) instead of the level-weighted Dice and overlap-cross terms (a CPU-budget recipe:
    # eq. 15 weighs the many level-3 voxels down, so whole-tree Dice rises far more slowly)
    stage_loss: str = "paper"
    # Augmentation's fields as a dict; "domain_randomization" holds the DomainRandomization
    # settings as a dict (hipas_core.sts.randomization; absent or all probabilities 0: off)
    augmentation: dict = field(default_factory=lambda: asdict(Augmentation()))
    val_every: int = 50
    val_patches: int = 4
    checkpoint_every: int = 50
    max_minutes: float | None = None  # stop early (and save) after this wall time
    device: str = "cpu"
    amp: bool = True  # CUDA only
    inference_window: tuple[int, int, int] | None = None  # default: the patch
    inference_overlap: float = 0.25
    vesselness_sigmas_mm: tuple[float, ...] = DEMO_VESSELNESS_SIGMAS_MM
    encoder_init: str | None = None  # a `hipas pretrain` checkpoint copied into every stage's encoder
    freeze_encoder: bool = True  # the paper: encoder fixed when transferred, only the decoder trained
    # stagewise: stage s >= 1 reads P^{s-1} of the frozen stages from a per-case cache, computed
    # over the whole case crop stage by stage (as inference does), instead of running stages
    # 0..s-1 on every patch. Faster (one stage forward per step instead of s + 1); the cached
    # prior sees the case before patch augmentation and domain randomization (flips are applied
    # to it as to the labels).
    cached_priors: bool = False
    # cached_priors: also keep each case's prior on disk here (.npy), named by the case, the stage
    # and a digest of the frozen stages' weights, so a resumed or repeated run reads it instead of
    # recomputing it (None: in memory only)
    prior_cache_dir: str | None = None
    # weight of the Skeleton Recall loss (Kirchhoff et al., ECCV 2024) added to each trained
    # stage's (or the baseline's) loss, on the tubed centrelines of that stage's targets (0: off)
    skeleton_recall_weight: float = 0.0
    # start from this checkpoint's weights (same kind; tensors matched by name, residual blocks it
    # lacks start as identities: hipas_core.sts.network.load_matching_weights). Every stage then
    # counts as started, so stagewise warm start never overwrites a trained stage.
    init_from: str | None = None
    # "constant", or "poly": lr x (1 - step / steps) ** 0.9 (nnU-Net's schedule), so the last
    # steps refine instead of jumping around the minimum
    lr_schedule: str = "constant"
    # weights and batches in channels-last 3D memory format (about 15 % faster steps on this
    # project's CPU under oneDNN; numerically equivalent, not bit-identical)
    channels_last: bool = False
    # where each step's patches come from: "sequential" (one numpy stream over the global batch,
    # as a single process draws it) or "per-patch" (patch i of step t from its own generator
    # (seed, t, i): distributed ranks draw only their own patches)
    patch_stream: str = "sequential"

    def __post_init__(self) -> None:
        if self.patch_stream not in ("sequential", "per-patch"):
            raise ValueError(f"patch_stream must be 'sequential' or 'per-patch', not {self.patch_stream!r}")
        if self.stage_loss not in ("paper", "dice"):
            raise ValueError(f"stage_loss must be 'paper' or 'dice', not {self.stage_loss!r}")
        if self.lr_schedule not in ("constant", "poly"):
            raise ValueError(f"lr_schedule must be 'constant' or 'poly', not {self.lr_schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)
