"""The standardized grid of the paper and the fixed orientation of normalized images.

The names are defined in ``hipas_core.conventions`` (its module docstring documents the grid and
the orientation); this module keeps them importable under their old name.
"""

from hipas_core.conventions import (
    HU_WINDOW,
    I2SR_THICKNESS_MM,
    STANDARD_ORIENTATION,
    STANDARD_SPACING,
)

__all__ = ["HU_WINDOW", "I2SR_THICKNESS_MM", "STANDARD_ORIENTATION", "STANDARD_SPACING"]
