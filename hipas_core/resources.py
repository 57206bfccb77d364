"""Files shipped with the package, found through ``importlib.resources``.

The demo models live in the repository's ``models/`` folder, which ``pyproject.toml`` installs as
the package ``hipas_models`` (``sts-demo.pt``, ``i2sr-demo.pt`` and their model cards); an
editable install maps the same folder. Installs are unzipped (wheels, editable), so a resource
is a real file and its path can be handed to code that opens files by name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODELS_PACKAGE = "hipas_models"


def shipped_model(name: str) -> Path:
    """The path of the shipped model file ``name`` (e.g. ``"sts-demo.pt"``)."""
    return Path(str(resources.files(MODELS_PACKAGE).joinpath(name)))
