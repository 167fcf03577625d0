"""Uncertainty map and quality score (medxai.uncertainty): on the input grid, in [0, 1], high at
the predicted border of a real ISIC image; MC dropout reproducible with a seed; the Parametric Map
validates and holds the NIfTI's values; the score reaches report.json and the batch manifest; a
model without TTA and without dropout gets no map and a reason."""

from __future__ import annotations

import copy
import csv
import json
import warnings

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage

from medxai.errors import InputError
from medxai.inference import predict
from medxai.io.readers import load_image
from medxai.models.bundle import ModelBundle, network_from_config
from medxai.overlap import dice
from medxai.pipeline import SegmentOptions, segment_path
from medxai.uncertainty import (
    ViewCollector,
    border_band,
    mc_dropout_samples,
    normalised_entropy,
    quality_scores,
    summarise,
    tta_accumulator,
    uncertainty_method,
)
from tests.conftest import shared_path
from tests.helpers_dicom import assert_dciodvfy_clean, find_tool

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ISIC_IMAGE = ("isic2018", "val", "images", "ISIC_0000006.jpg")


@pytest.fixture(scope="module")
def isic_bundle():
    from medxai.models.registry import load_model

    return load_model("isic2018-lesion-unet")


@pytest.fixture(scope="module")
def isic_result(isic_bundle, tmp_path_factory):
    """``medxai segment`` of one real ISIC val photo with the bundled model (dihedral TTA)."""
    image = shared_path(*ISIC_IMAGE)
    out = tmp_path_factory.mktemp("isic_unc")
    opts = SegmentOptions(formats=["nifti", "json", "dicom-seg", "dicom-pm", "dicom-sr"],
                          explain="none", device="cpu")
    return segment_path(image, isic_bundle, out, opts)


def test_entropy_is_normalised_and_zero_where_certain():
    prob = torch.tensor([[1.0, 0.5, 0.9], [0.0, 0.5, 0.1]]).reshape(2, 3, 1)
    h = normalised_entropy(prob)[0, :, 0]
    assert h[0] == 0 and h[1] == pytest.approx(1.0)
    assert h[2] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2), rel=1e-6)
    three = torch.full((3, 2, 2), 1 / 3)
    assert torch.allclose(normalised_entropy(three), torch.ones(1, 2, 2))


def test_uncertainty_map_on_the_input_grid_and_high_at_the_border(isic_result):
    folder = isic_result.output_dir
    assert {"uncertainty.nii.gz", "uncertainty_variance.nii.gz"} <= set(isic_result.files)
    unc = nib.load(folder / "uncertainty.nii.gz")
    labels = nib.load(folder / "labels.nii.gz")
    assert unc.shape == labels.shape and unc.shape[:2] == (512, 512)
    np.testing.assert_array_equal(unc.affine, labels.affine)
    h = np.asarray(unc.dataobj, dtype=np.float32)[..., 0]
    assert h.dtype == np.float32 and h.min() >= 0 and h.max() <= 1
    lab = np.asarray(labels.dataobj)[..., 0]
    assert 0 < (lab > 0).mean() < 1
    near = border_band(lab, 3)
    dist_out = ndimage.distance_transform_edt(lab == 0)
    dist_in = ndimage.distance_transform_edt(lab > 0)
    far_out, far_in = dist_out > 30, dist_in > 30
    assert far_out.any() and far_in.any()
    assert h[near].mean() > 0.5
    assert h[near].mean() > 5 * h[far_out].mean()
    assert h[near].mean() > 5 * h[far_in].mean()
    variance = np.asarray(nib.load(folder / "uncertainty_variance.nii.gz").dataobj)
    assert variance.min() >= 0 and variance.max() <= 0.25


def test_report_holds_the_quality_score_and_its_definition(isic_result):
    report = json.loads((isic_result.output_dir / "report.json").read_text())
    unc, quality = report["uncertainty"], report["quality"]
    assert unc["method"] == "tta" and unc["samples"] == 8 and "dihedral" in unc["reason"]
    assert 0 <= quality["score"] <= 1
    assert "soft Dice" in quality["definition"] and "AUROC" in quality["definition"]
    assert quality["score"] == quality["scores"]["expected_dice"]
    assert 0 < quality["scores"]["view_agreement"] <= 1
    assert "uncertainty" in report["timings_s"]


def test_uncertainty_parametric_map_validates_and_equals_the_nifti(isic_result, tmp_path):
    folder = isic_result.output_dir
    pm_path = folder / "pm_uncertainty.dcm"
    assert_dciodvfy_clean(pm_path)
    ds = pydicom.dcmread(pm_path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    concept = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    value = concept.get("CodeValue") or concept.get("LongCodeValue")  # > 16 characters: long
    assert (value, concept.CodingSchemeDesignator) == ("predictive-entropy", "99MEDXAI")
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert "tta-entropy" in " ".join(str(e.ContributionDescription)
                                     for e in ds.ContributingEquipmentSequence)
    photo = pydicom.dcmread(folder / "source_photo.dcm")
    ref = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == photo.SOPInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = hd.imread(str(pm_path))
    assert image.SOPInstanceUID == ds.SOPInstanceUID
    frames = np.frombuffer(ds.FloatPixelData, dtype="<f4").reshape(ds.Rows, ds.Columns)
    nifti = np.asarray(nib.load(folder / "uncertainty.nii.gz").dataobj)[..., 0]
    # the PM holds the float32 map, the NIfTI its 16-bit scaled copy: within half a step
    step = (frames.max() - frames.min()) / 65535
    assert step > 0
    np.testing.assert_allclose(frames.T, nifti, rtol=0, atol=step / 2 + 1e-7)
    tool = find_tool("paramap2itkimage")
    if tool is not None:  # dcmqi reads the same values back
        import subprocess

        import SimpleITK as sitk

        run = subprocess.run([tool, "--inputDICOM", str(pm_path), "--outputDirectory",
                              str(tmp_path)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pmap.nrrd")))
        np.testing.assert_array_equal(np.transpose(back, (2, 1, 0))[..., 0], frames.T)
    # the SR carries the same quality score
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert "quality-score" in str(sr)


def test_mc_dropout_is_reproducible_and_differs_from_tta(isic_bundle):
    image = load_image(shared_path(*ISIC_IMAGE)).image
    net = isic_bundle.network
    state = copy.deepcopy(net.state_dict())
    rng_before = torch.random.get_rng_state()
    a = mc_dropout_samples(isic_bundle, image, "cpu", samples=4, seed=0)
    b = mc_dropout_samples(isic_bundle, image, "cpu", samples=4, seed=0)
    c = mc_dropout_samples(isic_bundle, image, "cpu", samples=4, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    assert torch.equal(a.mean, b.mean) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.mean, c.mean)
    assert a.n == 4 and a.variance.max() > 0  # the passes differ: dropout was on
    # batch norm stayed in eval mode (running statistics unchanged), every module is back in eval
    after = net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert not any(m.training for m in net.modules())
    acc = tta_accumulator(isic_bundle)
    pred = predict(isic_bundle, image, device="cpu", each_view=lambda _i, p: acc.add(p))
    tta = summarise(acc.finish("tta"), pred)
    mc = summarise(a, pred, seed=0)
    assert mc.entropy.shape == tta.entropy.shape == (1, *image.shape[1:])
    assert not torch.equal(mc.entropy, tta.entropy)
    assert 0 <= float(mc.entropy.min()) and float(mc.entropy.max()) <= 1


def test_tta_views_do_not_change_the_prediction(isic_bundle):
    image = load_image(shared_path(*ISIC_IMAGE)).image
    plain = predict(isic_bundle, image, device="cpu")
    acc = tta_accumulator(isic_bundle)
    seen = predict(isic_bundle, image, device="cpu", each_view=lambda _i, p: acc.add(p))
    assert torch.equal(plain.labels, seen.labels)
    assert torch.equal(plain.probabilities, seen.probabilities)
    samples = acc.finish("tta")
    assert samples.n == 8  # the dihedral group
    torch.testing.assert_close(samples.mean, plain.probabilities, atol=1e-5, rtol=0)


def test_foreground_views_give_the_same_samples_as_every_class(isic_bundle):
    """A binary thresholded model's views handed as the foreground alone (ViewCollector, what
    segment and batch pass) give the same label maps and variance map as every class's views,
    bit for bit, and the same uncertainty; the prediction is unchanged."""
    image = load_image(shared_path(*ISIC_IMAGE)).image
    full, fg = tta_accumulator(isic_bundle), tta_accumulator(isic_bundle)
    assert fg.takes_foreground
    a = predict(isic_bundle, image, device="cpu", each_view=lambda _i, p: full.add(p))
    hook = ViewCollector([fg])
    assert hook.takes_foreground
    b = predict(isic_bundle, image, device="cpu", each_view=hook)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.probabilities, b.probabilities)
    sa, sb = full.finish("tta"), fg.finish("tta")
    assert not sa.foreground_only and sb.foreground_only and sb.n == sa.n == 8
    assert sb.mean.shape == (1, *a.labels.shape[1:])
    assert torch.equal(sa.labels, sb.labels)
    assert torch.equal(sa.variance[1:2], sb.variance)
    ua, ub = summarise(sa, a), summarise(sb, b)
    assert torch.equal(ua.entropy, ub.entropy) and torch.equal(ua.variance, ub.variance)
    assert ua.scores == ub.scores
    with pytest.raises(InputError, match="cannot be mixed"):
        fg.add(a.probabilities)


def test_views_taken_in_another_thread_give_the_same_samples(isic_bundle):
    """ViewCollector with a pool (what batch passes: each view's label map and sums off the
    network's thread) gives the samples of the same views taken in the caller's thread, bit for
    bit, for each image of a batch; an error in the other thread is raised at finish."""
    import concurrent.futures as cf

    from medxai.inference import predict_batch

    image = load_image(shared_path(*ISIC_IMAGE)).image
    images = [image, torch.flip(image, dims=(1,))]
    here = [tta_accumulator(isic_bundle) for _ in images]
    aside = [tta_accumulator(isic_bundle) for _ in images]
    a = predict_batch(isic_bundle, images, device="cpu", each_view=ViewCollector(here))
    with cf.ThreadPoolExecutor(1) as pool:
        b = predict_batch(isic_bundle, images, device="cpu", each_view=ViewCollector(aside, pool))
        assert len(aside[0]) == 8  # counting waits for the views
        for pa, pb, ha, hb in zip(a, b, here, aside, strict=True):
            assert torch.equal(pa.labels, pb.labels)
            sa, sb = ha.finish("tta"), hb.finish("tta")
            assert sb.n == sa.n == 8
            assert torch.equal(sa.labels, sb.labels)
            assert torch.equal(sa.mean, sb.mean) and torch.equal(sa.variance, sb.variance)
        broken = tta_accumulator(isic_bundle)
        ViewCollector([broken], pool)(0, torch.zeros(3, 4, 4))  # a sample of the wrong kind
        ViewCollector([broken], pool).foreground(0, torch.zeros(1, 4, 4))
        with pytest.raises(InputError, match="cannot be mixed"):
            broken.finish("tta")


def test_view_blocks_restore_each_view_as_its_own_inversion():
    """The foreground views go back onto a full-resolution photo in blocks (one resize of
    several channels): each equals the foreground channel of its own two-class resize, bit for
    bit, for every block size view_blocks gives; three channels take another path in torch's
    kernel, so no block has three."""
    from medxai.inference import view_blocks
    from medxai.preprocessing.spatial import resize_probabilities

    assert view_blocks(8, 3) == [2, 2, 2, 2] and view_blocks(8, 5) == [5, 2, 1]
    assert view_blocks(8, 64) == [8] and view_blocks(3, 0) == [1, 1, 1]
    for n in range(1, 10):
        for most in range(0, 10):
            sizes = view_blocks(n, most)
            assert sum(sizes) == n and 3 not in sizes and max(sizes) <= max(1, most)
    views = torch.softmax(torch.randn(8, 2, 192, 192, generator=torch.Generator().manual_seed(5)),
                          1)
    size = (648, 486)  # a 2592x1944 photo's shape at a quarter of its side
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):  # one thread: where torch 2.13's three-channel path differs
            torch.set_num_threads(t)
            own = [resize_probabilities(v, size)[1] for v in views]
            for most in (1, 2, 4, 5, 8):
                start = 0
                for n in view_blocks(8, most):
                    block = resize_probabilities(views[start:start + n, 1], size)
                    for j in range(n):
                        assert torch.equal(block[j], own[start + j])
                    start += n
    finally:
        torch.set_num_threads(threads)


def test_view_agreement_counts_equal_monai_dice_and_the_band_equals_the_filters():
    """The view agreement's Dice from pixel counts equals medxai.overlap.dice (MONAI's
    compute_dice) exactly, absent labels included; the border band equals
    grey_dilation != grey_erosion (scipy's reflect edges) in 2D and 3D."""
    rng = np.random.default_rng(7)
    for shape, k in (((37, 53), 2), ((40, 31), 4), ((9, 12, 7), 3)):
        final = ndimage.median_filter(rng.integers(0, k, shape), 3).astype(np.uint8)
        fp = ndimage.generate_binary_structure(final.ndim, 1)
        filters = ndimage.grey_dilation(final, footprint=fp) != ndimage.grey_erosion(
            final, footprint=fp)
        np.testing.assert_array_equal(border_band(final), filters)
        samples = [final, np.roll(final, 3, 0), np.zeros_like(final),
                   ndimage.median_filter(rng.integers(0, k, shape), 3).astype(np.uint8)]
        values = sorted({int(v) for v in np.unique(np.stack([*samples, final]))} - {0})
        want = []
        for sample in samples:
            present = {int(v) for v in np.unique(np.stack([sample, final]))}
            wanted = [v for v in values if v in present]
            scores = dice(torch.from_numpy(sample)[None, None],
                          torch.from_numpy(final)[None, None], num_classes=max(wanted) + 1,
                          include_background=False)[0]
            want.append(float(scores[[v - 1 for v in wanted]].double().mean()))
        got = quality_scores(torch.zeros(1, *shape), torch.from_numpy(final)[None],
                             torch.zeros(k, *shape), torch.from_numpy(np.stack(samples)))
        assert got["view_agreement"] == float(np.mean(want))
    empty = np.zeros((6, 5), dtype=np.uint8)  # nothing anywhere: agreement 1
    got = quality_scores(torch.zeros(1, 6, 5), torch.from_numpy(empty)[None],
                         torch.zeros(2, 6, 5), torch.from_numpy(np.stack([empty, empty])))
    assert got["view_agreement"] == 1.0


def test_quality_scores_on_a_known_case():
    labels = torch.zeros(1, 20, 20, dtype=torch.uint8)
    labels[0, 5:15, 5:15] = 1
    prob = torch.stack([1 - labels[0].float(), labels[0].float()])
    h = normalised_entropy(prob)
    views = torch.stack([labels[0], labels[0]])
    s = quality_scores(h, labels, prob, views)
    assert s["quality_score"] == 1.0 and s["view_agreement"] == 1.0
    assert s["expected_dice"] == pytest.approx(1.0) and s["border_uncertainty"] == 0.0
    h2 = h.clone()
    h2[0][torch.from_numpy(border_band(labels[0].numpy()))] = 0.5
    shifted = torch.roll(labels[0], 2, 0)
    s2 = quality_scores(h2, labels, prob, torch.stack([labels[0], shifted]))
    assert s2["border_uncertainty"] == pytest.approx(0.5)
    assert s2["quality_score"] == s2["expected_dice"] == pytest.approx(1.0)
    soft = prob.clone()
    soft[1][labels[0] > 0] = 0.5  # half sure inside: soft Dice 2*50/(50+100)
    soft[0] = 1 - soft[1]
    s3 = quality_scores(normalised_entropy(soft), labels, soft)
    assert s3["quality_score"] == pytest.approx(2 / 3)
    assert s2["view_agreement"] == pytest.approx((1 + 0.8) / 2)
    empty = quality_scores(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8),
                           torch.stack([torch.ones(4, 4), torch.zeros(4, 4)]))
    assert empty["quality_score"] == 1.0 and empty["border_uncertainty"] is None


def _without_tta_and_dropout(bundle: ModelBundle) -> ModelBundle:
    config = copy.deepcopy(bundle.config)
    config["inference"]["tta"] = "none"
    config["inference"].pop("tta_flips", None)
    config["network_def"]["dropout"] = 0.0
    net = network_from_config(config)
    net.load_state_dict(bundle.network.state_dict())
    net.eval()
    return ModelBundle(config=config, metadata=dict(bundle.metadata), network=net)


def test_no_tta_and_no_dropout_gives_a_reason_not_a_crash(rgb_bundle, tmp_path):
    plain = _without_tta_and_dropout(rgb_bundle)
    method, reason = uncertainty_method(plain)
    assert method is None and "no dropout" in reason and "without test-time" in reason
    assert uncertainty_method(plain, "mc-dropout")[0] is None
    assert "no dropout layer" in uncertainty_method(plain, "mc-dropout")[1]
    assert "--tta" in uncertainty_method(plain, "tta")[1]
    assert uncertainty_method(rgb_bundle)[0] == "tta"  # trained with flips TTA
    assert uncertainty_method(rgb_bundle, "mc-dropout")[0] == "mc-dropout"
    assert uncertainty_method(rgb_bundle, "none")[0] is None
    from medxai.samples import make_dermoscopy_photo
    from PIL import Image

    rgb, _ = make_dermoscopy_photo(64, 48, seed=3)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    for requested in (None, "mc-dropout", "tta"):
        out = tmp_path / f"out_{requested}"
        res = segment_path(tmp_path / "photo.png", plain, out,
                           SegmentOptions(formats=["nifti", "json"], explain="none",
                                          device="cpu", uncertainty=requested))
        assert not any("uncertainty" in f for f in res.files)
        report = json.loads((res.output_dir / "report.json").read_text())
        assert report["uncertainty"]["method"] is None and report["uncertainty"]["reason"]
        assert report["quality"]["score"] is None and report["quality"]["reason"]
    # the same model with its dropout: MC dropout on request
    res = segment_path(tmp_path / "photo.png", rgb_bundle, tmp_path / "mc",
                       SegmentOptions(formats=["nifti", "json"], explain="none", device="cpu",
                                      uncertainty="mc-dropout", mc_samples=3))
    report = json.loads((res.output_dir / "report.json").read_text())
    assert report["uncertainty"]["method"] == "mc-dropout"
    assert report["uncertainty"]["samples"] == 3 and report["uncertainty"]["seed"] == 0
    assert "uncertainty.nii.gz" in res.files



def _photo_export(export, count: int, *, seed: int, uid: int):
    """``count`` small dermoscopy-like photos as DICOM, one study and series each."""
    from medxai.samples import make_dermoscopy_photo
    from tests.fixtures_pacs import write_photo_dicom

    for i in range(count):
        rgb, _ = make_dermoscopy_photo(48, 40, seed=seed + i)
        (export / f"S{i}").mkdir(parents=True)
        root = f"1.2.826.0.1.3680043.{uid}"
        write_photo_dicom(rgb, export / f"S{i}" / "photo.dcm", study=f"{root}.1.{i}",
                          series=f"{root}.2.{i}", sop=f"{root}.3.{i}", series_number=1,
                          instance=1)
    return export

def _maps_by_series(out, name: str) -> dict[str, np.ndarray]:
    """Series Instance UID -> the map ``name`` of that series' batch output folder."""
    maps = {}
    for path in sorted(out.rglob(name)):
        report = json.loads((path.parent / "report.json").read_text())
        maps[report["input"]["series_instance_uid"]] = nib.load(path).get_fdata()
    return maps


def test_quality_score_in_the_batch_manifest(tmp_path):
    from medxai.batch import Manifest, run_batch
    from tests.fixtures_pacs import make_test_bundle

    export = _photo_export(tmp_path / "export", 2, seed=10, uid=10)
    bundle = make_test_bundle(tmp_path / "model")  # flips TTA: uncertainty by default
    out = tmp_path / "out"
    summary = run_batch(export, out, model=bundle,
                        options=SegmentOptions(formats=["nifti", "json"], explain=None,
                                               device="cpu"))
    assert summary.series["done"] == 2
    with open(out / "manifest_series.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "quality_score" in rows[0]
    with Manifest(out / "manifest.sqlite") as man:
        stored = {r["output_name"]: r["quality_score"] for r in man.series()}
    for row in rows:
        report = json.loads((out / row["output_name"] / "report.json").read_text())
        assert float(row["quality_score"]) == pytest.approx(report["quality"]["score"])
        assert stored[row["output_name"]] == pytest.approx(report["quality"]["score"])
        assert (out / row["output_name"] / "uncertainty.nii.gz").is_file()


def test_mc_dropout_of_a_sliding_window_3d_model(tmp_path):
    """The bundled hippocampus model (sliding window, left-right mirror TTA, dropout 0.1) on a
    real MR crop: by default a map from its two TTA views, an MC dropout map on request, both
    on the volume's grid."""
    from medxai.models.registry import load_model

    image = shared_path("hippocampus", "imagesTr", "hippocampus_004.nii.gz")
    bundle = load_model("hippocampus-unet")
    method, _reason = uncertainty_method(bundle)
    assert method == "tta"
    tta = segment_path(image, bundle, tmp_path / "tta", SegmentOptions(
        formats=["nifti", "json"], explain="none", device="cpu"))
    report = json.loads((tta.output_dir / "report.json").read_text())
    assert report["uncertainty"]["method"] == "tta" and report["uncertainty"]["samples"] == 2
    assert nib.load(tta.output_dir / "uncertainty.nii.gz").shape == nib.load(image).shape
    res = segment_path(image, bundle, tmp_path, SegmentOptions(
        formats=["nifti", "json"], explain="none", device="cpu", uncertainty="mc-dropout",
        mc_samples=2))
    unc = nib.load(res.output_dir / "uncertainty.nii.gz")
    labels = nib.load(res.output_dir / "labels.nii.gz")
    assert unc.shape == labels.shape == nib.load(image).shape
    np.testing.assert_allclose(unc.affine, labels.affine)
    h = np.asarray(unc.dataobj)
    assert h.min() >= 0 and h.max() <= 1 and h.max() > 0
    report = json.loads((res.output_dir / "report.json").read_text())
    assert report["uncertainty"]["method"] == "mc-dropout"
    assert 0 <= report["quality"]["score"] <= 1


def test_batch_reuses_the_batched_predictions_tta_views(tmp_path, monkeypatch):
    """The batch runner predicts in batches with the TTA views collected per image, so the
    uncertainty map costs no second prediction: with the re-prediction path disabled the batch
    still writes every map, equal to what medxai segment writes for the same input."""
    import medxai.uncertainty as unc_mod
    from medxai.batch import run_batch
    from tests.fixtures_pacs import make_test_bundle

    export = _photo_export(tmp_path / "export", 2, seed=20, uid=11)
    bundle = make_test_bundle(tmp_path / "model")
    opts = SegmentOptions(formats=["nifti", "json"], explain=None, device="cpu")
    from medxai.models.bundle import load_bundle

    single = segment_path(export / "S0" / "photo.dcm", load_bundle(bundle), tmp_path / "single",
                          opts)

    def no_second_prediction(*_a, **_k):
        raise AssertionError("the TTA views were predicted a second time")

    monkeypatch.setattr(unc_mod, "predict", no_second_prediction)
    summary = run_batch(export, tmp_path / "out", model=bundle, options=opts)
    assert summary.series["done"] == 2
    maps = _maps_by_series(tmp_path / "out", "uncertainty.nii.gz")
    assert len(maps) == 2
    reference = nib.load(single.output_dir / "uncertainty.nii.gz").get_fdata()
    # S0's map equals segment's for S0 (each file is within (max - min) / 131070 of the map: its
    # 16-bit NIfTI quantum); S1's map is another image's (and differs)
    quantum = float(np.ptp(reference)) / 131070
    np.testing.assert_allclose(maps["1.2.826.0.1.3680043.11.2.0"], reference,
                               atol=2 * quantum + 1e-6, rtol=0)
    assert np.abs(maps["1.2.826.0.1.3680043.11.2.1"] - reference).max() > 1e-2


def test_batch_uncertainty_option_and_resume_check(tmp_path):
    """`medxai batch --uncertainty none` writes no map (report.json says why), and resuming the
    job with another --uncertainty is refused with the setting named; the default resumes."""
    from click.testing import CliRunner

    from medxai.cli.main import cli
    from medxai.samples import make_dermoscopy_photo
    from tests.fixtures_pacs import make_test_bundle, write_photo_dicom

    export = tmp_path / "export"
    rgb, _ = make_dermoscopy_photo(48, 40, seed=30)
    (export / "S0").mkdir(parents=True)
    write_photo_dicom(rgb, export / "S0" / "photo.dcm", study="1.2.826.0.1.3680043.12.1.0",
                      series="1.2.826.0.1.3680043.12.2.0", sop="1.2.826.0.1.3680043.12.3.0",
                      series_number=1, instance=1)
    model = make_test_bundle(tmp_path / "model")  # flips TTA: a map by default
    out = tmp_path / "out"
    base = ["batch", str(export), "-o", str(out), "--model", str(model), "--explain", "none",
            "--format", "nifti,json", "--device", "cpu", "-q"]
    res = CliRunner().invoke(cli, [*base, "--uncertainty", "none"])
    assert res.exit_code == 0, res.output
    reports = list(out.rglob("report.json"))
    assert len(reports) == 1 and not list(out.rglob("uncertainty.nii.gz"))
    assert json.loads(reports[0].read_text())["uncertainty"]["method"] is None
    again = CliRunner().invoke(cli, [*base, "--uncertainty", "tta"])
    assert again.exit_code == 2 and "uncertainty" in again.output
    same = CliRunner().invoke(cli, [*base, "--uncertainty", "none"])
    assert same.exit_code == 0, same.output


def test_batch_runs_mc_dropout_in_line_not_in_a_writer_thread(rgb_bundle, tmp_path, monkeypatch):
    """MC dropout switches the shared network's dropout on and seeds torch's RNG: the batch
    runs it in the network's thread, never in a writer thread (where it would race with the next
    prediction or another writer), and each map equals what medxai segment writes."""
    import threading

    import medxai.uncertainty as unc_mod
    from medxai.batch import run_batch

    export = _photo_export(tmp_path / "export", 3, seed=30, uid=12)
    opts = SegmentOptions(formats=["nifti", "json"], explain="none", device="cpu",
                          uncertainty="mc-dropout", mc_samples=3)
    single = segment_path(export / "S1" / "photo.dcm", rgb_bundle, tmp_path / "single", opts)
    threads = []
    real = unc_mod.mc_dropout_samples

    def recording(*a, **k):
        threads.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(unc_mod, "mc_dropout_samples", recording)
    summary = run_batch(export, tmp_path / "out", model=rgb_bundle, options=opts)
    assert summary.series["done"] == 3
    assert len(threads) == 3 and not any(t.startswith("medxai-write") for t in threads), threads
    reference = nib.load(single.output_dir / "uncertainty_variance.nii.gz").get_fdata()
    maps = _maps_by_series(tmp_path / "out", "uncertainty_variance.nii.gz")
    assert len(maps) == 3
    # S1's map equals segment's for S1; S0's and S2's are other images' (and differ)
    np.testing.assert_allclose(maps["1.2.826.0.1.3680043.12.2.1"], reference, atol=1e-6, rtol=0)
    for other in ("1.2.826.0.1.3680043.12.2.0", "1.2.826.0.1.3680043.12.2.2"):
        assert np.abs(maps[other] - reference).max() > 1e-4, other


def test_normalised_entropy_by_blocks_gives_the_whole_map_values() -> None:
    """The entropy computed by blocks of pixels is, to the bit, the formula on the whole map
    at once (float64 throughout), for 2 to 6 classes, maps larger than one block, zeros,
    ones, negative zeros and unnormalised columns."""
    import math

    from medxai.uncertainty import _ENTROPY_BLOCK

    def whole(prob: torch.Tensor) -> torch.Tensor:
        p = prob.to(torch.float64, copy=True).clamp_(0, 1)
        p /= p.sum(0, keepdim=True).clamp_min_(1e-12)
        terms = p.clamp_min(1e-300).log_().mul_(p)
        terms.masked_fill_(~(p > 0), 0.0)
        h = -(terms.sum(0))
        return (h / math.log(prob.shape[0])).clamp_(0, 1).float()[None]

    g = torch.Generator().manual_seed(0)
    for k, shape in [(2, (300, 301)), (3, (257, 263)), (5, (40, 41, 45)), (6, (7, 9))]:
        prob = torch.rand((k, *shape), generator=g) ** 3
        flat = prob.view(k, -1)
        flat[:, :50] = 0.0
        flat[0, 50:100] = 1.0
        flat[1, 100:150] = -0.0
        flat[:, 150:200] *= 7.0  # columns that do not sum to 1
        if k == 2:
            flat[1, 200:] = 1.0 - flat[0, 200:]
        assert flat.shape[1] > _ENTROPY_BLOCK or shape == (7, 9)
        got, want = normalised_entropy(prob), whole(prob)
        assert got.shape == want.shape == (1, *shape)
        assert got.numpy().tobytes() == want.numpy().tobytes()
