"""HiPaS per-scan library: reading CT, spatial normalization, phantoms, segmentation, lungs,
morphometry and evaluation. Arrays are in (z, y, x) order with spacing in mm in the same order."""

__version__ = "0.1.0"
