"""The package as `pip install .` builds it: declared dependencies against the lock, the listed
packages, the shipped models as package resources. (`make install-check` installs it for real.)"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OWN_PACKAGES = ("hipas_core", "analysis")


def _declared() -> dict[str, list[Requirement]]:
    project = PYPROJECT["project"]
    groups = {"runtime": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [Requirement(line) for line in lines] for group, lines in groups.items()}


def _pins() -> dict[str, str]:
    """requirements.txt: name -> exact version (every line an exact pin)."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"requirements.txt pins exactly: {line}"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_declared_ranges_hold_the_locked_pins_and_torch_stays_exact():
    pins = _pins()
    declared = {canonicalize_name(r.name): r for group in _declared().values() for r in group}
    assert set(declared) == set(pins), "pyproject.toml and requirements.txt name different packages"
    for name, requirement in declared.items():
        assert requirement.specifier.contains(pins[name], prereleases=True), (str(requirement), pins[name])
        assert requirement.specifier, f"{name}: no range at all"
    assert str(declared["torch"].specifier) == f"=={pins['torch']}"  # a range would let pip pull a CUDA build
    assert declared["snakemake"].extras == {"reports"}


def _third_party_imports() -> set[str]:
    names = set()
    for package in OWN_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in (*OWN_PACKAGES, "hipas_models")}


def test_every_library_import_is_a_runtime_dependency():
    """Each module hipas_core or analysis imports (lazily too) comes from a distribution that
    `pip install .` installs, not from the workflow or test extras."""
    runtime = {canonicalize_name(r.name) for r in _declared()["runtime"]}
    providers = packages_distributions()
    imports = _third_party_imports()
    assert {"numpy", "torch", "SimpleITK", "kimimaro", "statsmodels"} <= imports  # the scan saw them
    missing = {name: providers.get(name) for name in imports
               if not runtime & {canonicalize_name(d) for d in providers.get(name, [])}}
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_every_package_folder_is_listed_and_models_ship_from_models():
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {".".join(p.parent.relative_to(REPO).parts) for package in OWN_PACKAGES
               for p in (REPO / package).rglob("__init__.py")}
    assert listed == folders | {"hipas_models"}
    assert setuptools["package-dir"] == {"hipas_models": "models"}
    shipped = setuptools["package-data"]["hipas_models"]
    assert {"sts-demo.pt", "i2sr-demo.pt"} <= set(shipped)
    for pattern in shipped:
        assert list((REPO / "models").glob(pattern)), f"package-data {pattern!r} matches nothing in models/"


def test_default_models_are_the_shipped_package_resources(monkeypatch):
    from importlib import resources

    from hipas_core.cli.super_resolve import DEFAULT_MODEL
    from hipas_core.resources import shipped_model
    from hipas_core.sts.predictor import default_model_path

    monkeypatch.delenv("HIPAS_MODEL", raising=False)
    root = Path(str(resources.files("hipas_models")))
    assert default_model_path() == shipped_model("sts-demo.pt") == root / "sts-demo.pt"
    assert DEFAULT_MODEL == shipped_model("i2sr-demo.pt") == root / "i2sr-demo.pt"
    assert default_model_path().is_file() and DEFAULT_MODEL.is_file()
    monkeypatch.setenv("HIPAS_MODEL", "/elsewhere/model.pt")
    assert default_model_path() == Path("/elsewhere/model.pt")
