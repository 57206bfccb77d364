"""STS inference: Predictor round trip in the input grid, --record, --batch with a bad row."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hipas_core.atomic import write_image
from hipas_core.exclusion import read_marker
from hipas_core.grid import STANDARD_SPACING
from hipas_core.resources import shipped_model
from hipas_core.sts.cascade import CascadeConfig
from hipas_core.sts.checkpoint import build_model, save_checkpoint
from hipas_core.sts.network import StageConfig
from hipas_core.sts.predictor import Predictor, exclusive_labels


def tiny_chest(shape=(20, 36, 44), spacing_zyx=(2.0, 1.4, 1.3)) -> sitk.Image:
    """Body of soft tissue with two air-filled lungs and a bright tube in each (HU, int16)."""
    z, y, x = np.indices(shape)
    cy, cx = shape[1] / 2, shape[2] / 2
    ct = np.full(shape, -1000, np.int16)
    body = ((y - cy) / (shape[1] * 0.48)) ** 2 + ((x - cx) / (shape[2] * 0.48)) ** 2 <= 1
    ct[body] = 40
    for side in (-1, 1):
        lung = ((y - cy) / (shape[1] * 0.3)) ** 2 + ((x - cx - side * shape[2] * 0.22) / (shape[2] * 0.17)) ** 2 <= 1
        lung &= (z > 2) & (z < shape[0] - 3)
        ct[lung] = -850
        tube = ((y - cy) ** 2 + (x - cx - side * shape[2] * 0.22) ** 2 <= 2) & lung
        ct[tube] = 60
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing(spacing_zyx[::-1])
    image.SetOrigin((-30.0, 12.5, 100.0))
    return image


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    config = CascadeConfig(stage=StageConfig(width=4, blocks_per_level=(0, 0, 1, 1, 1))).to_dict()
    model = build_model("cascade", config)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, {
        "kind": "cascade", "model_config": config, "state_dict": model.state_dict(),
        "inference": {"window": [16, 32, 32], "overlap": 0.25, "thresholds": [0.5, 0.5],
                      "vesselness_sigmas_mm": [1.0]},
    })
    return path


def test_exclusive_labels_argmax_where_both_pass():
    probs = np.array([[0.9, 0.6, 0.2, 0.7], [0.1, 0.8, 0.3, 0.7]])
    assert exclusive_labels(probs).tolist() == [1, 2, 0, 1]


def test_predictor_round_trip_writes_labels_in_input_grid(tiny_model):
    torch.set_num_threads(1)
    image = tiny_chest()
    predictor = Predictor(tiny_model)
    result = predictor.segment(image, probabilities=True)
    labels = result.labels
    assert labels.GetSize() == image.GetSize()
    assert np.allclose(labels.GetSpacing(), image.GetSpacing())
    assert np.allclose(labels.GetOrigin(), image.GetOrigin())
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2}
    probs = result.probabilities
    assert probs.GetNumberOfComponentsPerPixel() == 2 and probs.GetSize() == image.GetSize()
    assert {"vesselness_s", "stage0_s", "stage3_s"} <= set(result.timings)


def test_predictor_with_record_maps_back_to_original_grid(tiny_model):
    from hipas_core.normalize import normalize_ct

    image = tiny_chest()
    standard, record = normalize_ct(image)
    predictor = Predictor(tiny_model)
    direct = predictor.segment(image).labels
    result = predictor.segment(standard, record=record)
    via_record = result.labels
    assert via_record.GetSize() == image.GetSize()
    assert np.array_equal(sitk.GetArrayViewFromImage(direct), sitk.GetArrayViewFromImage(via_record))
    # the standardized-grid labels lie on the normalized CT's grid and map to the input-grid ones
    std_labels = result.standard_labels
    assert std_labels.GetSize() == standard.GetSize() and std_labels.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(std_labels.GetOrigin(), standard.GetOrigin())
    assert set(np.unique(sitk.GetArrayViewFromImage(std_labels))) <= {0, 1, 2}
    assert (sitk.GetArrayViewFromImage(std_labels) > 0).sum() > 0


@pytest.mark.slow
def test_segment_cli_single_and_batch_with_one_bad_row(tmp_path, tiny_model, hipas):
    ct = tmp_path / "ct.nii.gz"
    write_image(ct, tiny_chest())
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image\n")
    out = tmp_path / "labels.nii.gz"
    single = hipas("segment", "-i", ct, "-o", out, "--model", tiny_model, "--threads", "1", "--protocol", "ctpa")
    assert single.returncode == 0, single.stderr
    assert "thresholds artery 0.5, vein 0.5 for CTPA" in single.stderr
    assert sitk.ReadImage(str(out)).GetSize() == tiny_chest().GetSize()

    batch = tmp_path / "scans.tsv"
    good_out, bad_out = tmp_path / "b_good.nii.gz", tmp_path / "b_bad.nii.gz"
    good_std, bad_std = tmp_path / "b_good.std.nii.gz", tmp_path / "b_bad.std.nii.gz"
    batch.write_text(f"input\toutput\trecord\tscan_id\tstd_output\tprotocol\n{bad}\t{bad_out}\t\tbroken\t{bad_std}\tNCCT\n"
                     f"{ct}\t{good_out}\t\tgood\t{good_std}\tctpa\n")
    excluded = hipas("segment", "--batch", batch, "--model", tiny_model, "--exclude-invalid", "--threads", "1")
    assert excluded.returncode == 0, excluded.stderr
    assert "good: " in excluded.stderr and "thresholds artery 0.5, vein 0.5 for CTPA" in excluded.stderr
    marker = read_marker(bad_out)
    assert marker is not None and marker.scan_id == "broken" and marker.stage == "segment"
    assert sitk.ReadImage(str(good_out)).GetSize() == tiny_chest().GetSize()
    assert read_marker(bad_std) is not None
    assert np.allclose(sitk.ReadImage(str(good_std)).GetSpacing()[::-1], STANDARD_SPACING)

    for path in (good_out, bad_out, good_std, bad_std):
        path.unlink()
    failing = hipas("segment", "--batch", batch, "--model", tiny_model, "--threads", "1")
    assert failing.returncode == 2
    assert "bad.nii.gz" in failing.stderr
    assert good_out.is_file() and not bad_out.exists()


def test_segment_cli_rejects_missing_model(tmp_path, hipas):
    result = hipas("segment", "-i", tmp_path / "x.nii.gz", "-o", tmp_path / "y.nii.gz", "--model", tmp_path / "none.pt")
    assert result.returncode == 2
    assert "none.pt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_fitted_window_shrinks_to_the_crop_rounded_to_the_size_multiple():
    from hipas_core.sts.predictor import fitted_window

    assert fitted_window((160, 192, 224), (140, 146, 204)) == (144, 160, 208)
    assert fitted_window((64, 128, 128), (140, 146, 204)) == (64, 128, 128)
    assert fitted_window((64, 128, 128), (16, 17, 1)) == (16, 32, 16)


def test_device_auto_resolves_to_an_available_device():
    from hipas_core.sts.predictor import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_export_for_inference_sets_window_thresholds_and_drops_training_state(tiny_model, tmp_path):
    from hipas_core.sts.checkpoint import export_for_inference, load_checkpoint

    out = tmp_path / "exported.pt"
    export_for_inference(tiny_model, out, thresholds=(0.4, 0.55), window=(32, 48, 48), overlap=0.1)
    payload = load_checkpoint(out)
    assert payload["inference"]["window"] == [32, 48, 48]
    assert payload["inference"]["overlap"] == 0.1
    assert payload["inference"]["thresholds"] == [0.4, 0.55]
    assert payload["inference"]["vesselness_sigmas_mm"] == [1.0]
    assert "optimizer" not in payload and "rng" not in payload
    predictor = Predictor(out, device="auto")
    assert predictor.window == (32, 48, 48) and predictor.thresholds == (0.4, 0.55)
    assert predictor.branch_consistent is False  # off unless the checkpoint says so
    export_for_inference(tiny_model, out, branch_consistent=True)
    assert Predictor(out).branch_consistent is True and Predictor(out, branch_consistent=False).branch_consistent is False
    assert Predictor(out).attach_fragments is False  # off unless the checkpoint says so
    export_for_inference(tiny_model, out, attach_fragments=True)
    assert Predictor(out).attach_fragments is True and Predictor(out, attach_fragments=False).attach_fragments is False


def test_branch_consistent_predictor_keeps_the_vessel_mask(tiny_model):
    torch.set_num_threads(1)
    image = tiny_chest()
    plain, branched = Predictor(tiny_model, branch_consistent=False), Predictor(tiny_model, branch_consistent=True)
    for predictor in (plain, branched):
        with torch.no_grad():  # both classes pass their threshold everywhere (artery slightly higher)
            head = predictor.model.stages[-1].head
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.3, 0.2]))
    a, b = plain.segment(image), branched.segment(image)
    assert "branches_s" not in a.timings and "branches_s" in b.timings
    vessels = sitk.GetArrayFromImage(a.standard_labels) > 0
    assert vessels.any()
    assert np.array_equal(vessels, sitk.GetArrayFromImage(b.standard_labels) > 0)
    branched.attach_fragments = True  # tree fragments attached on top: the same vessel mask again
    c = branched.segment(image)
    assert np.array_equal(vessels, sitk.GetArrayFromImage(c.standard_labels) > 0)


def test_calibrate_thresholds_picks_the_threshold_that_reproduces_the_truth_in_the_input_grid(tiny_model):
    from hipas_core.sts.predictor import THRESHOLD_GRID, calibrate_thresholds

    torch.set_num_threads(1)
    ct = tiny_chest()
    predictor = Predictor(tiny_model)
    probs = sitk.GetArrayFromImage(predictor.segment(ct, probabilities=True).probabilities)
    assert probs.shape == (*sitk.GetArrayViewFromImage(ct).shape, 2)  # scored in the CT's own grid
    for tree in range(2):
        inside = probs[..., tree][probs[..., tree] > 0]
        grid = tuple(round(float(q), 3) for q in np.quantile(inside, [0.2, 0.5, 0.8]))
        assert len(set(grid)) == 3
        truth = np.where(probs[..., tree] > grid[1], tree + 1, 0).astype(np.uint8)
        assert calibrate_thresholds(predictor, [(ct, truth)], grid=grid)[tree] == grid[1]
        # pooled over scans: the same scan twice gives the same answer
        assert calibrate_thresholds(predictor, [(ct, truth), (ct, truth)], grid=grid)[tree] == grid[1]
    assert max(THRESHOLD_GRID) == 0.99 and list(THRESHOLD_GRID) == sorted(set(THRESHOLD_GRID))


def test_predictions_outside_the_thoracic_cavity_are_removed(tiny_model):
    """A model whose last stage says "vessel" everywhere: confined, nothing is left outside the
    cavity (chest wall, air around the body) and the lungs keep their labels."""
    from hipas_core.lungs import thoracic_cavity

    torch.set_num_threads(1)
    image = tiny_chest()
    flooding = Predictor(tiny_model)
    with torch.no_grad():
        head = flooding.model.stages[-1].head
        head.weight.zero_()
        head.bias.copy_(torch.tensor([5.0, -5.0]))  # artery probability 0.99 everywhere
    confined = sitk.GetArrayFromImage(flooding.segment(image).labels)
    flooding.confine = False
    everywhere = sitk.GetArrayFromImage(flooding.segment(image).labels)
    cavity = thoracic_cavity(image)
    # confinement acts in the standardized grid; mapped back to these coarser voxels its edge
    # moves by up to about one voxel
    allowance = thoracic_cavity(image, margin_mm=6.0)
    ct = sitk.GetArrayFromImage(image)
    assert everywhere[~allowance].sum() > 1000  # the flood reaches beyond the cavity without confinement
    assert not confined[~allowance].any() and (confined[~cavity] > 0).sum() < 0.05 * (confined > 0).sum()
    lungs = ct < -500
    assert (confined[lungs & cavity] == 1).mean() > 0.9  # (the edges are lost to resampling)
    assert not cavity[:, 0, :].any()  # the image border lies outside the body


def test_thoracic_cavity_spans_the_mediastinum_and_holds_every_phantom_vessel():
    from hipas_core.lungs import thoracic_cavity
    from hipas_core.phantom import PhantomSpec, generate_phantom

    phantom = generate_phantom(PhantomSpec.from_seed(3, size="small"))
    cavity = thoracic_cavity(phantom.ct)
    labels = sitk.GetArrayFromImage(phantom.labels)
    lungs = sitk.GetArrayFromImage(phantom.lungs) > 0
    assert cavity[labels > 0].all()  # the heart's and mediastinum's vessels too, not only the lungs'
    assert (labels[~lungs] > 0).sum() > 1000  # (there are many of those)
    tissue = (sitk.GetArrayFromImage(phantom.ct) > -500) & (labels == 0)
    assert not cavity[:, :, :3].any() and not cavity[:, :3, :].any()
    assert (tissue & cavity).sum() < 0.4 * tissue.sum()  # most of the chest wall, fat and bone lie outside


class _PlantedCode:
    """Unpickling this object would run ``touch MARKER`` (what a hostile model file could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["segment", "super-resolve"])
def test_a_model_file_that_carries_code_is_refused_without_running_it(tmp_path, hipas, command):
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "hipas-sts/1", "kind": "cascade", "payload": _PlantedCode(marker)}, hostile)
    ct = tmp_path / "ct.nii.gz"
    write_image(ct, tiny_chest(spacing_zyx=(5.0, 1.4, 1.3)))  # thick: super-resolve needs its model
    out = tmp_path / "out.nii.gz"
    result = hipas(command, "-i", ct, "-o", out, "--model", hostile)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "hostile.pt" in result.stderr
    assert not marker.exists() and not out.exists()


def test_a_raw_thick_scan_is_normalized_through_i2sr_like_hipas_normalize(tiny_model):
    thick = tiny_chest(spacing_zyx=(3.0, 1.4, 1.3))
    thin = tiny_chest(spacing_zyx=(1.0, 1.4, 1.3))
    shipped = Predictor(tiny_model, i2sr_model=shipped_model("i2sr-demo.pt"))
    assert shipped._i2sr_for(thick) is not None and shipped._i2sr_for(thin) is None
    assert Predictor(tiny_model)._i2sr_for(thick) is None  # the library default: trilinear z
    from hipas_core.normalize import normalize_ct

    via_i2sr = shipped.segment(thick).standard_labels
    expected_grid = normalize_ct(thick, i2sr_model=shipped._i2sr_for(thick))[0]
    assert via_i2sr.GetSize() == expected_grid.GetSize()


def test_fitted_window_with_overlap_tiles_a_long_axis_in_as_many_smaller_windows():
    from hipas_core.sts.sliding_window import fitted_window, window_starts

    window, shape = (160, 192, 224), (250, 300, 420)
    fitted = fitted_window(window, shape, overlap=0.25)
    assert fitted == (144, 176, 176)
    for w, f, s in zip(window, fitted, shape, strict=True):
        starts = window_starts(s, f, 0.25)
        assert len(starts) == len(window_starts(s, w, 0.25))  # no more windows than before
        assert starts[-1] + f == s and all(b - a <= 0.75 * f + 1 for a, b in zip(starts, starts[1:], strict=False))
        assert len(window_starts(s, f - 16, 0.25)) > len(starts)  # and none smaller would do
    assert fitted_window(window, (140, 146, 204), overlap=0.25) == fitted_window(window, (140, 146, 204))


def test_auto_precision_follows_the_cpu():
    from hipas_core.sts.predictor import Predictor, cpu_has_native_bf16

    predictor = Predictor(device="cpu")
    native = cpu_has_native_bf16()
    assert predictor.precision == ("bf16" if native else "fp32") and predictor.channels_last is native
    fp32 = Predictor(device="cpu", precision="fp32")
    assert fp32.precision == "fp32" and not fp32.channels_last


def test_thresholds_per_protocol_label_a_scan_of_that_protocol_at_its_own(tiny_model, tmp_path):
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.checkpoint import export_for_inference, load_checkpoint

    torch.set_num_threads(1)
    image = tiny_chest()
    probs = sitk.GetArrayFromImage(Predictor(tiny_model).segment(image, probabilities=True).probabilities)
    high = round(float(np.quantile(probs[probs > 0.5], 0.5)), 3)  # half the voxels above 0.5 fall below it
    out = tmp_path / "by_protocol.pt"
    export_for_inference(tiny_model, out, thresholds_by_protocol={"ctpa": (high, high)})
    assert load_checkpoint(out)["inference"]["thresholds_by_protocol"] == {"CTPA": [high, high]}
    predictor = Predictor(out)
    assert predictor.thresholds_for("CTPA") == predictor.thresholds_for("ctpa") == (high, high)
    assert predictor.thresholds_for("NCCT") == predictor.thresholds_for(None) == (0.5, 0.5)
    ctpa, ncct, unknown = (predictor.segment(image, protocol=p) for p in ("CTPA", "NCCT", None))
    assert ctpa.thresholds == (high, high) and ncct.thresholds == unknown.thresholds == (0.5, 0.5)
    export_for_inference(tiny_model, tmp_path / "high.pt", thresholds=(high, high))
    at_high = Predictor(tmp_path / "high.pt").segment(image)
    for grid in ("labels", "standard_labels"):
        assert np.array_equal(sitk.GetArrayViewFromImage(getattr(ctpa, grid)), sitk.GetArrayViewFromImage(getattr(at_high, grid)))
        assert np.array_equal(sitk.GetArrayViewFromImage(getattr(ncct, grid)), sitk.GetArrayViewFromImage(getattr(unknown, grid)))
    assert (sitk.GetArrayViewFromImage(ctpa.labels) > 0).sum() < (sitk.GetArrayViewFromImage(ncct.labels) > 0).sum()
    with pytest.raises(InvalidInputError, match="MRI"):
        predictor.thresholds_for("MRI")
    export_for_inference(tiny_model, out, thresholds_by_protocol={})  # {} removes them
    assert "thresholds_by_protocol" not in load_checkpoint(out)["inference"]


def test_a_checkpoint_with_a_bad_protocol_table_is_refused_naming_the_file(tiny_model, tmp_path):
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.checkpoint import load_checkpoint

    payload = load_checkpoint(tiny_model)
    for table in ({"MRI": [0.5, 0.5]}, {"CTPA": [0.5]}, {"CTPA": [0.5, 1.5]}, ["CTPA"]):
        payload["inference"] = {**payload["inference"], "thresholds_by_protocol": table}
        path = tmp_path / "bad.pt"
        save_checkpoint(path, payload)
        with pytest.raises(InvalidInputError, match="bad.pt"):
            Predictor(path)


def test_thresholds_by_slice_thickness_follow_the_scans_own_slices(tiny_model, tmp_path):
    from hipas_core.normalize import normalize_ct
    from hipas_core.sts.checkpoint import export_for_inference, load_checkpoint

    torch.set_num_threads(1)
    image = tiny_chest()  # 2 mm slices
    probs = sitk.GetArrayFromImage(Predictor(tiny_model).segment(image, probabilities=True).probabilities)
    high = round(float(np.quantile(probs[probs > 0.5], 0.5)), 3)
    out = tmp_path / "by_thickness.pt"
    rules = [{"min_slice_thickness_mm": 2.0, "thresholds": (high, high)},
             {"min_slice_thickness_mm": 2.0, "protocol": "ctpa", "thresholds": (0.3, 0.3)},
             {"min_slice_thickness_mm": 3.0, "thresholds": (0.2, 0.2)}]
    export_for_inference(tiny_model, out, thresholds_by_protocol={"NCCT": (0.6, 0.6)}, thresholds_by_slice_thickness=rules)
    assert load_checkpoint(out)["inference"]["thresholds_by_slice_thickness"][1] == {
        "min_slice_thickness_mm": 2.0, "protocol": "CTPA", "thresholds": [0.3, 0.3]}
    predictor = Predictor(out)
    assert predictor.thresholds_for("NCCT", slice_thickness_mm=2.0) == (high, high)  # before the protocol's
    assert predictor.thresholds_for("CTPA", slice_thickness_mm=2.0) == (0.3, 0.3)  # naming the protocol first
    assert predictor.thresholds_for("CTPA", slice_thickness_mm=5.0) == (0.2, 0.2)  # the largest minimum
    assert predictor.thresholds_for("NCCT", slice_thickness_mm=1.0) == predictor.thresholds_for("NCCT") == (0.6, 0.6)
    assert predictor.thresholds_for(None, slice_thickness_mm=1.0) == (0.5, 0.5)
    assert predictor.thresholds_for(None, slice_thickness_mm=2.0) == (high, high)
    raw = predictor.segment(image, protocol="NCCT")
    standard, record = normalize_ct(image)  # 1 mm slices; the record keeps the scan's 2 mm
    normalized = predictor.segment(standard, record=record, protocol="NCCT")
    assert raw.thresholds == normalized.thresholds == (high, high)
    export_for_inference(tiny_model, tmp_path / "high.pt", thresholds=(high, high))
    at_high = Predictor(tmp_path / "high.pt").segment(image)
    assert np.array_equal(sitk.GetArrayViewFromImage(raw.labels), sitk.GetArrayViewFromImage(at_high.labels))
    export_for_inference(out, out, thresholds_by_slice_thickness=[])  # [] removes them
    assert "thresholds_by_slice_thickness" not in load_checkpoint(out)["inference"]


def test_a_checkpoint_with_bad_slice_thickness_rules_is_refused_naming_the_file(tiny_model, tmp_path):
    from hipas_core.errors import InvalidInputError
    from hipas_core.sts.checkpoint import load_checkpoint

    payload = load_checkpoint(tiny_model)
    good = {"min_slice_thickness_mm": 4.0, "thresholds": [0.4, 0.4]}
    for rules in ({"4": [0.4, 0.4]}, [{"thresholds": [0.4, 0.4]}], [{**good, "protocol": "MRI"}],
                  [{**good, "min_slice_thickness_mm": -1}], [{**good, "thresholds": [0.4, 1.0]}],
                  [{**good, "slices": 5}], [good, dict(good)], ["4 mm"]):
        payload["inference"] = {**payload["inference"], "thresholds_by_slice_thickness": rules}
        path = tmp_path / "bad.pt"
        save_checkpoint(path, payload)
        with pytest.raises(InvalidInputError, match="bad.pt.*thresholds_by_slice_thickness"):
            Predictor(path)


def test_segment_batch_with_a_bad_protocol_fails_before_the_model_loads(tmp_path, hipas):
    batch = tmp_path / "scans.tsv"
    batch.write_text(f"input\toutput\trecord\tscan_id\tstd_output\tprotocol\n{tmp_path / 'ct.nii.gz'}\t"
                     f"{tmp_path / 'out.nii.gz'}\t\tscan1\t\tMRI\n")
    result = hipas("segment", "--batch", batch, "--model", tmp_path / "none.pt")
    assert result.returncode == 2
    assert "scans.tsv" in result.stderr and "MRI" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.nii.gz").exists()
