"""I2SR: inter- and intra-slice super-resolution of thick-slice CT to 1 mm slices.

Thick-slice CT (> 2 mm) is brought to 1 mm slices on the same in-plane grid before segmentation
(paper, Methods "CT spatial-normalization with I2SR"); arrays are (z, y, x) in HU.

Modules: ``network`` (``I2SRConfig``, ``I2SRNet``: FE -> FI -> I2FF x l -> RE, output = linear
z-interpolation + learned residual; ``VesselnessNet``, the O_F of the loss), ``checkpoint``
(``save_model``/``load_model``/``checkpoint_info``; format ``hipas-i2sr/2``, the layout of
``hipas_core.training_loop``, and ``hipas-i2sr/1`` read too; read with
``torch.load(weights_only=True)``, so loading never runs code), ``inference`` (``super_resolve``,
``super_resolve_array``: tiled with halos, bounded memory), ``data`` (thick-slice simulation,
Poisson-law noise, synthetic vessel volumes, phantom volumes and phantom pairs acquired at 1 mm
and thick), ``training`` (O_F fitting, the loss of eq. 7, ``train`` with checkpoints and resume),
``evaluation`` (PSNR of I2SR and of linear interpolation). Training is the command
``hipas train-i2sr``.
"""

from hipas_core.i2sr.checkpoint import CHECKPOINT_FORMAT, checkpoint_info, load_model, save_model
from hipas_core.i2sr.data import (
    PhantomPair,
    make_training_pair,
    phantom_pairs,
    phantom_volumes,
    poisson_noise,
    simulate_thick,
    synthetic_vessel_volume,
    thick_slice_profile,
)
from hipas_core.i2sr.evaluation import evaluate, evaluate_pairs, psnr
from hipas_core.i2sr.inference import output_positions, super_resolve, super_resolve_array
from hipas_core.i2sr.network import I2SRConfig, I2SRNet, VesselnessNet, interpolate_z
from hipas_core.i2sr.training import i2sr_loss, train, train_vesselness_net

__all__ = [
    "CHECKPOINT_FORMAT",
    "I2SRConfig",
    "I2SRNet",
    "PhantomPair",
    "VesselnessNet",
    "checkpoint_info",
    "evaluate",
    "evaluate_pairs",
    "i2sr_loss",
    "interpolate_z",
    "load_model",
    "make_training_pair",
    "output_positions",
    "phantom_pairs",
    "phantom_volumes",
    "poisson_noise",
    "psnr",
    "save_model",
    "simulate_thick",
    "super_resolve",
    "super_resolve_array",
    "synthetic_vessel_volume",
    "thick_slice_profile",
    "train",
    "train_vesselness_net",
]
