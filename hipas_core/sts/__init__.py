"""STS: the saliency-transmission segmentation cascade of HiPaS (artery/vein segmentation).

Modules: ``network`` (one stage: residual depthwise 3D encoder-decoder), ``cascade`` (four
stages linked by prior-map transmission), ``losses`` (level-weighted Dice, overlap-cross),
``baseline`` (single-stage 3D U-Net), ``sliding_window`` (gaussian-blended tiling), ``data``
(training cases, patches, augmentation), ``training`` (the loop, checkpoints, resume),
``checkpoint`` (save/load/build), ``predictor`` (``Predictor``: load once, segment many scans).
"""

from hipas_core.sts.predictor import Predictor, default_model_path

__all__ = ["Predictor", "default_model_path"]
