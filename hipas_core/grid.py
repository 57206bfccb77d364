"""The standardized grid of the paper and the fixed orientation of normalized images.

Spacing is in mm in (z, y, x) order: 1.00 mm slices, 334/512 mm in-plane (Methods, Problem
formalization). Normalized images are stored in LPS orientation with an identity direction matrix
(x grows to the patient's left, y to the posterior, z to the head), which is what SimpleITK and
DICOM call "LPS"; arrays read from them are (z, y, x) = (inferior->superior, anterior->posterior,
right->left).
"""

STANDARD_SPACING: tuple[float, float, float] = (1.0, 334.0 / 512.0, 334.0 / 512.0)
STANDARD_ORIENTATION: str = "LPS"

HU_WINDOW: tuple[float, float] = (-1000.0, 600.0)
"""CT intensities are clipped to this window and mapped to [0, 1] for the networks."""

I2SR_THICKNESS_MM: float = 2.0
"""Slices thicker than this are super-resolved (I2SR) instead of interpolated in z."""
