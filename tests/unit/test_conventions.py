"""hipas_core.conventions is the one place that defines the project's conventions.

(a) The workflow plans without the package: the manifest schema must agree with the core, and the
rules keep no copy of their own. (b) No copy comes back elsewhere in
``hipas_core`` or ``analysis``: the grep-style checks below fail when one does.
Files are read as text (YAML, ``ast``, ``tokenize``); neither Snakemake nor the package's heavy
modules are imported.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import yaml

from hipas_core import conventions as c

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "hipas_core" / "conventions.py"
SOURCES = sorted(p for d in ("hipas_core", "analysis") for p in (REPO / d).rglob("*.py") if p != CORE)

# Copies in files another change owns; each is checked to hold the core's value until it imports it.
KNOWN_COPIES: dict[tuple[str, str], str] = {}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _known(path: Path, fact: str) -> bool:
    return (_rel(path), fact) in KNOWN_COPIES


# ---- (a) the workflow's copies agree with the core ----------------------------------------------
def _manifest_schema() -> dict:
    return yaml.safe_load((REPO / "workflow" / "schemas" / "manifest.schema.yaml").read_text())


def _common_smk() -> str:
    return (REPO / "workflow" / "rules" / "common.smk").read_text()


def test_manifest_schema_agrees_with_the_core():
    schema = _manifest_schema()
    properties = schema["properties"]
    assert tuple(schema["required"]) == c.MANIFEST_REQUIRED
    assert set(c.MANIFEST_COLUMNS) <= set(properties)
    assert tuple(properties["sex"]["enum"]) == c.SEXES
    assert tuple(properties["protocol"]["enum"]) == c.PROTOCOLS
    flags = [name for name, spec in properties.items() if spec.get("enum") == list(c.FLAG_VALUES)]
    assert tuple(flags) == c.DISEASE_FLAGS  # every flag, in the core's order, and nothing else


def test_the_workflow_keeps_no_copy_of_the_disease_flags():
    """The workflow reads the flags from the manifests through the schema; phantoms get them from
    ``hipas phantom --manifest``. No rules file restates them."""
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        assert not re.search(r"^\s*DISEASE_FLAGS\s*=", path.read_text(), flags=re.M), path


def test_common_smk_loads_without_the_package():
    """common.smk imports no project package at module level (input functions may, lazily)."""
    tree = ast.parse(_common_smk())  # common.smk is plain Python (no rules)
    imported = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in ("hipas_core", "analysis")}


def test_known_copies_still_hold_the_core_values():
    values = {"DEMO_VESSELNESS_SIGMAS_MM": c.DEMO_VESSELNESS_SIGMAS_MM, "LABEL_VALUES": c.LABEL_VALUES}
    for (path, _fact), name in KNOWN_COPIES.items():
        tree = ast.parse((REPO / path).read_text())
        for node in ast.walk(tree):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
            if isinstance(node, ast.Assign | ast.AnnAssign) and any(
                isinstance(t, ast.Name) and t.id == name for t in targets
            ):
                assert tuple(ast.literal_eval(node.value)) == values[name], f"{path}: {name}"


# ---- (b) each fact is defined once ------------------------------------------------------------------
DEFINITIONS = {  # functions only the core defines (a wrapper must have another name)
    "same_grid": r"^\s*def _?same_grid\(",
    "is_standard_grid": r"^\s*def _?is_standard_(grid|spacing)\(",
    "bounding box": r"^\s*def _?(bbox|bounding_box|bounding_slices)\(",
    "device resolution": r"^\s*def _?resolve_device\(",
    "level rule": r"^\s*def _?generation_to_level\(",
    "I2SR rule": r"^\s*def _?needs_super_resolution\(",
}
ASSIGNMENTS = {  # names only the core assigns (importing them is fine)
    "label map": r"^\s*(ARTERY|VEIN|TREES|LABEL_VALUES)\b[^=\n]*=(?!=)",
    "label map (pair)": r"^\s*ARTERY\s*,\s*VEIN\s*=",
    "disease flags": r"^\s*(DISEASE_FLAGS|DISEASES)\b[^=\n]*=\s*\(",
    "manifest columns": r"^\s*(MANIFEST_COLUMNS|COHORT_COLUMNS|INDICES)\b[^=\n]*=\s*\(",
    "metadata keys": r"^\s*META_[A-Z_]+\b[^=\n]*=\s*[\"']",
    "vesselness": r"^\s*DEMO_VESSELNESS_SIGMAS_MM\b[^=\n]*=",
    "grid": r"^\s*(STANDARD_SPACING|I2SR_THICKNESS_MM|HU_WINDOW)\b[^=\n]*=",
}
INLINE = {  # inline copies of a rule
    "device resolution": r"[\"']cuda[\"']\s+if\s+torch\.cuda\.is_available\(\)",
    "I2SR rule": r"thickness\w*(\([^)]*\))?\s*(>|<=)\s*[\w.]*threshold\w*\s*\+\s*1e-6",
    "vesselness": r"\(\s*0\.7\s*,\s*1\.5\s*\)",
    "disease flags": r"[\"']cardiomegaly[\"']\s*,\s*[\"']calcification[\"']",
    "bounding box": r"flatnonzero\(\s*\w+\.any\(axis=tuple\(",
    "label map": r"\(\s*\(\s*[\"']artery[\"']\s*,\s*1\s*\)",
}


def _hits(patterns: dict[str, str]) -> list[str]:
    hits = []
    for path in SOURCES:
        text = path.read_text()
        for fact, pattern in patterns.items():
            if _known(path, fact.split(" (")[0]):
                continue
            for match in re.finditer(pattern, text, flags=re.M):
                line = text.count("\n", 0, match.start()) + 1
                hits.append(f"{_rel(path)}:{line}: {fact}: {match.group(0).strip()}")
    return hits


@pytest.mark.parametrize("patterns", [DEFINITIONS, ASSIGNMENTS, INLINE], ids=["functions", "names", "inline"])
def test_each_fact_is_defined_only_in_the_core(patterns):
    assert _hits(patterns) == [], "defined outside hipas_core.conventions: import it from there"


def test_metadata_keys_are_spelled_only_in_the_core():
    keys = {c.META_SOURCE_FORMAT, c.META_SLICE_THICKNESS, c.META_SPACING_ASSUMED, c.META_SPACING_SOURCE}
    hits = []
    for path in SOURCES:
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type == tokenize.STRING and token.string.strip("\"'") in keys:
                hits.append(f"{_rel(path)}:{token.start[0]}: {token.string}")
    assert hits == []


def test_the_patterns_find_the_copies_they_forbid():
    """The checks above are not vacuous: each pattern matches the copy it was written against."""
    samples = [
        (DEFINITIONS, "same_grid", "def _same_grid(a, b) -> bool:"),
        (DEFINITIONS, "is_standard_grid", "def _is_standard_grid(image) -> bool:"),
        (DEFINITIONS, "bounding box", "def _bbox(mask, *, pad):"),
        (DEFINITIONS, "device resolution", "def resolve_device(device: str) -> str:"),
        (DEFINITIONS, "level rule", "def generation_to_level(generation):"),
        (DEFINITIONS, "I2SR rule", "def needs_super_resolution(thickness_mm, threshold_mm):"),
        (ASSIGNMENTS, "label map", 'TREES: dict[str, int] = {"artery": 1, "vein": 2}'),
        (ASSIGNMENTS, "label map", "LABEL_VALUES = (0, 1, 2)"),
        (ASSIGNMENTS, "label map (pair)", "ARTERY, VEIN = 1, 2"),
        (ASSIGNMENTS, "disease flags", 'DISEASES: tuple[str, ...] = ("cardiomegaly", "calcification")'),
        (ASSIGNMENTS, "manifest columns", 'MANIFEST_COLUMNS = ("scan_id", "path", "sex", "age", "protocol")'),
        (ASSIGNMENTS, "metadata keys", 'META_SLICE_THICKNESS = "hipas_slice_thickness_mm"'),
        (ASSIGNMENTS, "vesselness", "DEMO_VESSELNESS_SIGMAS_MM: tuple[float, ...] = (0.7, 1.5)"),
        (ASSIGNMENTS, "grid", "STANDARD_SPACING: tuple[float, float, float] = (1.0, 0.65, 0.65)"),
        (INLINE, "device resolution", '        return "cuda" if torch.cuda.is_available() else "cpu"'),
        (INLINE, "I2SR rule", "        if thickness <= threshold + 1e-6:"),
        (INLINE, "I2SR rule", "        if slice_thickness_mm(image) > args.i2sr_threshold_mm + 1e-6:"),
        (INLINE, "vesselness", '    parser.add_argument("--sigmas", default=(0.7, 1.5))'),
        (INLINE, "disease flags", '    flags = ("cardiomegaly", "calcification", "pah")'),
        (INLINE, "bounding box", "        hits = np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != axis)))"),
        (INLINE, "label map", '    for tree, value in (("artery", 1), ("vein", 2)):'),
    ]
    for patterns, fact, sample in samples:
        assert re.search(patterns[fact], sample, flags=re.M), (fact, sample)
    assert not re.search(ASSIGNMENTS["label map"], "    if kind == ARTERY:")
    assert not re.search(ASSIGNMENTS["label map"], "from hipas_core.conventions import ARTERY, VEIN")


# ---- the core's shared functions keep each caller's old behaviour ---------------------------------
def test_same_grid_tolerances():
    sitk = pytest.importorskip("SimpleITK")
    a = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    a.SetSpacing((0.7, 0.7, 2.0))
    b = sitk.Image(a)
    assert c.same_grid(a, b)
    b.SetSpacing((0.70002, 0.7, 2.0))  # within 1e-4, not 1e-5
    assert not c.same_grid(a, b)
    assert c.same_grid(a, b, spacing_rtol=1e-4)
    b.SetSpacing(a.GetSpacing())
    b.SetOrigin((0.002, 0.0, 0.0))  # origin beyond the default 1e-3 mm
    assert not c.same_grid(a, b)
    assert c.same_grid(a, b, origin_atol=None)
    b = sitk.Image(a)
    b.SetSpacing((0.7 + 1e-12, 0.7, 2.0))
    assert c.same_grid(a, b) and not c.same_grid(a, b, spacing_rtol=0.0, spacing_atol=0.0)
    assert not c.same_grid(a, sitk.Image(4, 5, 7, sitk.sitkUInt8))


def test_is_standard_grid_bounding_box_and_rules():
    np = pytest.importorskip("numpy")
    assert c.is_standard_spacing(c.STANDARD_SPACING)
    assert not c.is_standard_spacing((1.0, 0.7, 0.7))
    assert c.is_standard_spacing((1.0005, *c.STANDARD_SPACING[1:]), rtol=1e-5, atol=1e-3)
    assert not c.is_standard_spacing((1.0005, *c.STANDARD_SPACING[1:]))
    mask = np.zeros((5, 6, 7), bool)
    mask[1:3, 2, 4:6] = True
    assert c.bounding_box(mask) == ([1, 2, 4], [3, 3, 6])
    assert c.bounding_box(mask, pad=2) == ([0, 0, 2], [5, 5, 7])
    assert mask[c.bounding_slices(mask)].sum() == mask.sum()
    assert c.generation_to_level(np.array([0, 1, 2, 3, 5, 6, 30])).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert c.LEVEL_VALUES == (1, 2, 3, 4)
    assert c.needs_super_resolution(2.5) and not c.needs_super_resolution(2.0 + 5e-7)
    assert c.resolve_device("cpu") == "cpu"
    assert c.TREES == {"artery": 1, "vein": 2} and c.LABEL_VALUES == (0, 1, 2)
