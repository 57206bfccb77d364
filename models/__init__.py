"""The shipped demo models, installed as the package ``hipas_models`` (see ``pyproject.toml``);
find them with ``hipas_core.resources.shipped_model``. This folder holds weights and model cards,
no library code (``export_demo_model.py`` is a script run from the checkout)."""
