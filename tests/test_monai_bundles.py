"""MONAI model-zoo bundles (the real configs of ../shared/data/model_zoo) through medxai.

The zoo's weights are not public here: each test copies a bundle's ``configs/`` into a temporary
folder and saves seeded weights of the right shapes there (never into ../shared). The final
layer's bias is set from one dry run so that the seeded network labels part of the input, not
all or nothing (a label map with one value would make the comparisons empty).

Compute is kept small for 2 loaded CPU cores: inputs are crops of real volumes, and the
sliding-window ``roi_size`` in the copied configs is 32^3 (BraTS: 32x32x16) instead of 96^3
(240x240x160) - the same override in the config that both medxai and plain MONAI then read.

"Plain MONAI" is the bundle's own ``preprocessing`` (with MONAI's ``LoadImaged``), a MONAI
``DataLoader``, its ``inferer`` and its ``postprocessing`` (with MONAI's ``SaveImaged``), run as
``SupervisedEvaluator._iteration`` runs them (the evaluator itself needs pytorch-ignite, which is
not installed here).
"""

from __future__ import annotations

import copy
import glob
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from tests.helpers_dicom import assert_dciodvfy_clean, crop_dicom_series, find_tool

CT_SM = ("dicom", "totalsegmentator_tests", "tests", "reference_files", "example_ct_sm.nii.gz")
CT_DICOM = ("dicom", "totalsegmentator_tests", "tests", "reference_files", "example_ct_dicom")
MR_ANAT = ("dicom", "monai_testing_data", "anatomical.nii")
BRAIN = ("volumes", "pyradiomics_data", "brain1_image.nrrd")
#: every test here runs zoo-sized networks on real data (seconds to minutes on 2 loaded cores)
pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

SMALL_ROI = {"spleen_ct_segmentation": [32, 32, 32], "wholeBody_ct_segmentation": [32, 32, 32],
             "prostate_mri_anatomy": [32, 32, 32], "brats_mri_segmentation": [32, 32, 16]}
BRATS_LABELS = [{"value": 1, "name": "tumor core (non-enhancing)"},
                {"value": 2, "name": "whole tumor (edema)"},
                {"value": 4, "name": "enhancing tumor"}]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _parser(bundle: Path):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(bundle / "configs" / "inference.json"))
    p["bundle_root"] = str(bundle)
    return p


def plain_monai(bundle: Path, image: Path | list[str], out: Path) -> nib.Nifti1Image:
    """The bundle run by plain MONAI on a NIfTI file; the label map its SaveImaged wrote."""
    from monai.data import DataLoader, Dataset, decollate_batch

    p = _parser(bundle)
    p["output_dir"] = str(out)
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    pre = p.get_parsed_content("preprocessing")
    inferer = p.get_parsed_content("inferer")
    post = p.get_parsed_content("postprocessing")
    item = {"image": image if isinstance(image, list) else str(image)}
    loader = DataLoader(Dataset([item], transform=pre), batch_size=1,
                        num_workers=0)
    batch = next(iter(loader))
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    post(decollate_batch(batch, detach=True)[0])
    (written,) = glob.glob(str(out / "**" / "*.nii.gz"), recursive=True)
    return nib.load(written)


def zoo_bundle(tmp: Path, name: str, calib: Path | None = None, seed: int = 0,
               edit=None) -> Path:
    """A copy of a zoo bundle's configs with seeded weights in ``tmp/name``.

    ``calib``: a NIfTI on which the last layer's bias is balanced (about a third of the model
    grid gets a foreground label).
    """
    src = shared_path("model_zoo", name)
    dst = tmp / name
    shutil.copytree(src / "configs", dst / "configs")
    cfg_path = dst / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["inferer"]["roi_size"] = SMALL_ROI[name]
    if edit is not None:
        edit(cfg)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    p = _parser(dst)
    net = p.get_parsed_content("network_def").eval()
    if calib is not None:
        _balance(net, p, calib)
    (dst / "models").mkdir()
    torch.save(net.state_dict(), dst / "models" / "model.pt")
    return dst


def _balance(net: torch.nn.Module, parser, image: Path) -> None:
    from monai.transforms import LoadImaged

    pre = parser.get_parsed_content("preprocessing")
    assert any(isinstance(t, LoadImaged) for t in pre.transforms)
    data = pre({"image": str(image)})
    x = data["image"][None].as_tensor().float()
    last_bias = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))
                 and m.bias is not None][-1].bias
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(x, net)
        if logits.shape[1] == 1:
            return
        # per foreground channel: shift so that its logit beats channel 0 on ~1/3 of the voxels
        for k in range(1, logits.shape[1]):
            d = (logits[0, k] - logits[0, 0]).flatten()
            last_bias[k] -= float(torch.quantile(d[:: max(1, d.numel() // 100000)], 0.67))


def crop_nifti(src: Path, dst: Path, box: tuple[slice, ...]) -> Path:
    img = nib.load(str(src))
    nib.save(img.slicer[box], str(dst))
    return dst




def run_cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from medxai.cli.main import cli

    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output + (str(res.exception) if res.exception and
                                        not isinstance(res.exception, SystemExit) else "")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module")
def ct_crop(work: Path) -> Path:
    return crop_nifti(shared_path(*CT_SM), work / "ct_crop.nii.gz",
                      (slice(50, 74), slice(40, 64), slice(9, 21)))


@pytest.fixture(scope="module")
def spleen(work: Path, ct_crop: Path) -> Path:
    return zoo_bundle(work, "spleen_ct_segmentation", calib=ct_crop)


# ---------------------------------------------------------------------------------------------
# equal to plain MONAI, voxel for voxel
# ---------------------------------------------------------------------------------------------

def _medxai_labels(bundle_dir: Path, image: Path) -> tuple[np.ndarray, np.ndarray, object]:
    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model

    bundle = load_model(bundle_dir)
    loaded = load_image(image)
    pred = predict(bundle, loaded.image, device="cpu")
    return pred.labels[0].numpy(), pred.affine.numpy(), bundle


def test_spleen_equals_plain_monai(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    ref = plain_monai(spleen, ct_crop, tmp_path / "plain")
    labels, affine, bundle = _medxai_labels(spleen, ct_crop)
    assert bundle.contract.form == "monai" and bundle.contract.network == "UNet"
    assert [lab.name for lab in bundle.contract.labels] == ["background", "spleen"]
    want = np.asarray(ref.dataobj).squeeze()
    assert len(np.unique(want)) > 1, "the seeded network should label part of the crop"
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_allclose(affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(affine, nib.load(str(ct_crop)).affine, atol=1e-5)


@pytest.mark.parametrize("name,source,box", [
    ("wholeBody_ct_segmentation", CT_SM, (slice(54, 70), slice(44, 60), slice(10, 20))),
    ("prostate_mri_anatomy", MR_ANAT, (slice(12, 20), slice(15, 23), slice(8, 16))),
])
def test_zoo_bundle_equals_plain_monai(name: str, source: tuple[str, ...], box, tmp_path: Path
                                       ) -> None:
    crop = crop_nifti(shared_path(*source), tmp_path / "crop.nii.gz", box)
    bundle_dir = zoo_bundle(tmp_path, name, calib=crop)
    ref = plain_monai(bundle_dir, crop, tmp_path / "plain")
    labels, affine, _ = _medxai_labels(bundle_dir, crop)
    # prostate's Invertd interpolates the discrete label map (nearest_interp false), so plain
    # MONAI saves fractional label values at boundaries; medxai's label map is their rounding
    want = np.rint(np.asarray(ref.dataobj).squeeze())
    assert len(np.unique(want)) > 1
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_allclose(affine, ref.affine, atol=1e-5)


def _brats_input(tmp: Path) -> Path:
    """A 4D NIfTI (channels in the 4th axis, in the bundle's order T1c, T1, T2, FLAIR) from a
    crop of a real brain MR; the one sequence stands in for all four (only one is public
    here), each scaled differently."""
    from medxai.io.readers import load_image

    img = load_image(shared_path(*BRAIN)).image
    crop = img[0, 96:160, 96:160, 10:18].float().numpy()
    stack = np.stack([crop * s for s in (1.0, 0.8, 1.2, 0.6)], axis=-1).astype(np.float32)
    path = tmp / "brats4.nii.gz"
    affine = np.asarray(img.affine) @ np.array(
        [[1, 0, 0, 96], [0, 1, 0, 96], [0, 0, 1, 10], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(stack, affine), str(path))
    for c, seq in enumerate(("t1c", "t1", "t2", "flair")):
        nib.save(nib.Nifti1Image(stack[..., c], affine), str(tmp / f"brats_{seq}.nii.gz"))
    return path


def test_brats_four_channels_equals_plain_monai(tmp_path: Path) -> None:
    src = _brats_input(tmp_path)

    def edit(cfg: dict) -> None:
        cfg["medxai"] = {"labels": BRATS_LABELS}

    bundle_dir = zoo_bundle(tmp_path, "brats_mri_segmentation", edit=edit)
    # plain MONAI (as the bundle's datalist does): the four sequences as four files, which
    # LoadImaged stacks channel-first; medxai: the same four as one 4D NIfTI
    files = [str(tmp_path / f"brats_{seq}.nii.gz") for seq in ("t1c", "t1", "t2", "flair")]
    ref = plain_monai(bundle_dir, files, tmp_path / "plain")
    labels, affine, bundle = _medxai_labels(bundle_dir, src)
    assert bundle.contract.input.channels == 4
    assert bundle.contract.input.channel_names == ("T1c", "T1", "T2", "FLAIR")
    assert [lab.value for lab in bundle.contract.foreground_labels] == [1, 2, 4]
    np.testing.assert_array_equal(labels, np.asarray(ref.dataobj).squeeze())
    np.testing.assert_allclose(affine, ref.affine, atol=1e-5)


def test_brats_overlapping_segments_in_the_seg(tmp_path: Path) -> None:
    """BraTS's three sigmoid channels overlap (tumour core and enhancing tumour inside the whole
    tumour); its postprocessing folds them into one label map (1, 2, 4), as plain MONAI writes
    it. The DICOM SEG keeps the overlap: one segment per channel, each the channel's mask."""
    import pydicom

    from medxai.io.readers import load_image

    series = tmp_path / "mr"
    shutil.copytree(shared_path("hippocampus", "dicom_study1", "13_HCropVolume"), series)
    files = [str(series)] * 4  # one MR series stands in for the four sequences
    nifti = tmp_path / "mr.nii.gz"
    img = load_image(series).image
    nib.save(nib.Nifti1Image(img[0].numpy().astype(np.float32), img.affine.numpy()), str(nifti))

    def edit(cfg: dict) -> None:
        cfg["medxai"] = {"labels": BRATS_LABELS}

    bundle_dir = zoo_bundle(tmp_path, "brats_mri_segmentation", edit=edit)
    net_bias = torch.load(bundle_dir / "models" / "model.pt", weights_only=True)
    # sigmoid channels: positive on part of the volume, WT most, ET least (so they overlap)
    last = [k for k in net_bias if k.endswith("bias")][-1]
    net_bias[last] = torch.tensor([0.0, 0.3, -0.3])
    torch.save(net_bias, bundle_dir / "models" / "model.pt")
    code, out = run_cli("segment", "--channels", *files, "--model", str(bundle_dir), "-o",
                        str(tmp_path / "out"), "--device", "cpu", "--explain", "none")
    assert code == 0, out
    (res,) = [p.parent for p in (tmp_path / "out").rglob("seg.dcm")]
    labels = np.asarray(nib.load(str(res / "labels.nii.gz")).dataobj)
    ref = plain_monai(bundle_dir, [str(nifti)] * 4, tmp_path / "plain")
    np.testing.assert_array_equal(labels, np.asarray(ref.dataobj).squeeze())
    assert set(np.unique(labels)) - {0} and set(np.unique(labels)) <= {0, 1, 2, 4}
    assert_dciodvfy_clean(res / "seg.dcm")
    seg = pydicom.dcmread(str(res / "seg.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [lab["name"][:64] for lab in
                                                             BRATS_LABELS]
    # per segment, the voxels it marks (frame by frame, on the source slices)
    import highdicom as hd

    vol = hd.seg.Segmentation.from_dataset(seg)
    source_uids = [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
                   for ds in load_image(series).dicom.datasets]
    masks = vol.get_pixels_by_source_instance(source_sop_instance_uids=[u[2] for u in
                                                                        source_uids],
                                              combine_segments=False)  # (K, rows, cols, 3)
    masks = np.transpose(masks, (3, 2, 1, 0)).astype(bool)  # (3, I, J, K)
    overlap = masks.sum(0) > 1
    assert overlap.any()  # voxels in two segments at once: the SEG kept the overlap
    # the label map is the bundle's fold of the same masks: ET wins, then TC, then WT
    fold = np.where(masks[2], 4, np.where(masks[0], 1, np.where(masks[1], 2, 0)))
    np.testing.assert_array_equal(fold, labels)


# ---------------------------------------------------------------------------------------------
# end to end through `medxai segment`
# ---------------------------------------------------------------------------------------------

def test_segment_cli_ct_nifti(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    code, out = run_cli("segment", str(ct_crop), "--model", str(spleen), "-o", str(tmp_path),
                        "--device", "cpu", "--explain", "none")
    assert code == 0, out
    res = tmp_path / "ct_crop"
    lab = nib.load(str(res / "labels.nii.gz"))
    np.testing.assert_allclose(lab.affine, nib.load(str(ct_crop)).affine, atol=1e-5)
    report = json.loads((res / "report.json").read_text())
    assert report["model"]["name"] == "Spleen CT segmentation"
    assert [lab["name"] for lab in report["labels"]][-1] == "spleen"


def test_segment_cli_ct_dicom_seg(spleen: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from medxai.io.readers import load_image

    series = crop_dicom_series(shared_path(*CT_DICOM), tmp_path / "ct", slice(232, 280),
                               slice(200, 248))
    code, out = run_cli("segment", str(series), "--model", str(spleen), "-o",
                        str(tmp_path / "out"), "--device", "cpu", "--explain", "none")
    assert code == 0, out
    res = tmp_path / "out" / "ct"
    loaded = load_image(series)
    lab = nib.load(str(res / "labels.nii.gz"))
    np.testing.assert_allclose(lab.affine, np.asarray(loaded.image.affine), atol=1e-4)
    labels = np.asarray(lab.dataobj)
    assert labels.shape == tuple(loaded.image.shape[1:])
    assert_dciodvfy_clean(res / "seg.dcm")
    tool = find_tool("segimage2itkimage")
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed")
    if not labels.any():
        pytest.skip("the seeded network found nothing here; dcmqi writes no volume for it")
    conv = tmp_path / "dcmqi"
    conv.mkdir()
    proc = subprocess.run([tool, "--inputDICOM", str(res / "seg.dcm"), "--outputDirectory",
                           str(conv), "-t", "nrrd", "--mergeSegments"], capture_output=True,
                          text=True, timeout=300)
    nrrd = sorted(conv.glob("*.nrrd"))
    assert nrrd, proc.stdout + proc.stderr
    img = sitk.ReadImage(str(nrrd[0]))
    first = loaded.dicom.datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-5)
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-5)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient]
                          for ds in loaded.dicom.datasets])
    distance = np.linalg.norm(positions - np.asarray(img.GetOrigin()), axis=1)
    k0 = int(distance.argmin())
    assert distance[k0] < 1e-3
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    full = np.zeros(labels.shape, dtype=data.dtype)
    full[..., k0:k0 + data.shape[2]] = data
    np.testing.assert_array_equal(full > 0, labels > 0)


def test_zoo_bundle_through_batch_explain_and_transforms(spleen: Path, tmp_path: Path) -> None:
    """One bundle written by others, one label map, whichever way in: `medxai segment`,
    `medxai batch` over a DICOM export, `medxai explain` and the MONAI transform `Predictd`
    (in a user's MONAI pipeline) give the label map that predict() gives, on a DICOM series."""
    from medxai.inference import predict
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model
    from medxai.transforms import Predictd

    export = tmp_path / "export"
    series = crop_dicom_series(shared_path(*CT_DICOM), export / "ct", slice(232, 280),
                               slice(200, 248))
    loaded = load_image(series)
    bundle = load_model(spleen)
    reference = predict(bundle, loaded.image, device="cpu").labels[0].numpy()
    assert 0 < int((reference > 0).sum()) < reference.size, "the seeded network must label part"

    code, out = run_cli("segment", str(series), "--model", str(spleen), "-o",
                        str(tmp_path / "seg"), "--device", "cpu", "--explain", "none")
    assert code == 0, out
    segmented = np.asarray(nib.load(str(tmp_path / "seg" / "ct" / "labels.nii.gz")).dataobj)
    np.testing.assert_array_equal(segmented, reference)

    # this real export is de-identified down to empty Study/Series UIDs: batch groups its
    # files by folder, as segment reads the folder (it used to make one "series" per file)
    import pydicom

    assert pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID == ""
    code, out = run_cli("batch", str(export), "--model", str(spleen), "-o", str(tmp_path / "b"),
                        "--device", "cpu", "--explain", "none", "--format", "nifti,json")
    assert code == 0, out
    (labels_file,) = (tmp_path / "b").rglob("labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(str(labels_file)).dataobj), reference)

    d = Predictd(keys="image", model=bundle, device="cpu")({"image": loaded.image})
    np.testing.assert_array_equal(d["pred"][0].numpy(), reference)

    code, out = run_cli("explain", str(series), "--model", str(spleen), "-o",
                        str(tmp_path / "x"), "--device", "cpu", "--method", "gradcam")
    assert code == 0, out
    report = json.loads(next((tmp_path / "x").rglob("report.json")).read_text())
    assert report["saliency"], report.keys()


def test_segment_cli_mr_prostate(tmp_path: Path) -> None:
    crop = crop_nifti(shared_path(*MR_ANAT), tmp_path / "mr.nii.gz",
                      (slice(12, 20), slice(15, 23), slice(8, 16)))
    bundle_dir = zoo_bundle(tmp_path, "prostate_mri_anatomy", calib=crop)
    code, out = run_cli("segment", str(crop), "--model", str(bundle_dir), "-o",
                        str(tmp_path / "out"), "--device", "cpu", "--explain", "none")
    assert code == 0, out
    lab = nib.load(str(tmp_path / "out" / "mr" / "labels.nii.gz"))
    np.testing.assert_allclose(lab.affine, nib.load(str(crop)).affine, atol=1e-5)
    assert lab.shape == nib.load(str(crop)).shape


# ---------------------------------------------------------------------------------------------
# inputs that do not fit; bad bundles
# ---------------------------------------------------------------------------------------------

def test_wrong_channel_count_says_what_the_bundle_expects(tmp_path: Path) -> None:
    src = _brats_input(tmp_path)
    bundle_dir = zoo_bundle(tmp_path, "spleen_ct_segmentation")
    code, out = run_cli("segment", str(src), "--model", str(bundle_dir), "-o",
                        str(tmp_path / "out"), "--device", "cpu", "--explain", "none")
    assert code == 2, out
    assert "expects 1 input channel(s)" in out and "this input has 4" in out
    assert "Traceback" not in out
    assert not (tmp_path / "out" / "brats4").exists()


def test_brats_refuses_a_single_channel_and_names_the_sequences(tmp_path: Path,
                                                                ct_crop: Path) -> None:
    bundle_dir = zoo_bundle(tmp_path, "brats_mri_segmentation")
    code, out = run_cli("segment", str(ct_crop), "--model", str(bundle_dir), "-o",
                        str(tmp_path / "out"), "--device", "cpu", "--explain", "none")
    assert code == 2, out
    assert "4 input channel(s) (T1c, T1, T2, FLAIR)" in out and "4D NIfTI" in out


def test_2d_input_to_3d_bundle(spleen: Path, tmp_path: Path) -> None:
    from PIL import Image

    pic = tmp_path / "pic.png"
    Image.fromarray((np.arange(64 * 64) % 255).reshape(64, 64).astype(np.uint8)).save(pic)
    code, out = run_cli("segment", str(pic), "--model", str(spleen), "-o", str(tmp_path / "o"),
                        "--device", "cpu", "--explain", "none")
    assert code == 2, out
    assert "segments 3D volumes" in out
    assert not (tmp_path / "o" / "pic").exists()


def _bad_copy(spleen: Path, tmp: Path, edit=None) -> Path:
    dst = tmp / "bad"
    shutil.copytree(spleen, dst)
    if edit is not None:
        cfg = json.loads((dst / "configs" / "inference.json").read_text())
        edit(cfg)
        (dst / "configs" / "inference.json").write_text(json.dumps(cfg))
    return dst


def _refused(bundle: Path, ct_crop: Path, tmp: Path) -> str:
    code, out = run_cli("segment", str(ct_crop), "--model", str(bundle), "-o", str(tmp / "o"),
                        "--device", "cpu", "--explain", "none")
    assert code == 2, out
    assert "Traceback" not in out
    assert not (tmp / "o").exists() or not any((tmp / "o").iterdir())
    return out


def test_missing_network_def(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    out = _refused(_bad_copy(spleen, tmp_path, lambda c: c.pop("network_def")), ct_crop, tmp_path)
    assert "has no 'network_def'" in out


def test_unresolvable_target(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        c["network_def"]["_target_"] = "NoSuchUNet"

    out = _refused(_bad_copy(spleen, tmp_path, edit), ct_crop, tmp_path)
    assert "'NoSuchUNet' does not resolve" in out and "'network_def'" in out


def test_network_of_another_monai_version(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    """A config written for MONAI 0.x (UNet's `dimensions`, renamed `spatial_dims` since):
    refused naming the network and the argument."""
    import monai

    def edit(c: dict) -> None:
        c["network_def"]["dimensions"] = c["network_def"].pop("spatial_dims")

    out = _refused(_bad_copy(spleen, tmp_path, edit), ct_crop, tmp_path)
    assert (f"network_def UNet cannot be built with MONAI {monai.__version__}: it has no "
            "argument 'dimensions' (the config was written for another MONAI version)") in out
    assert len(out.strip().splitlines()) <= 2, out


def test_wrong_weight_shapes(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        c["network_def"]["channels"] = [8, 16, 32, 64, 128]

    out = _refused(_bad_copy(spleen, tmp_path, edit), ct_crop, tmp_path)
    assert "weights do not fit the network_def" in out and "size mismatch" in out


def test_pickled_full_model_is_refused(spleen: Path, ct_crop: Path, tmp_path: Path) -> None:
    bad = _bad_copy(spleen, tmp_path)
    p = _parser(bad)
    torch.save(p.get_parsed_content("network_def"), bad / "models" / "model.pt")
    out = _refused(bad, ct_crop, tmp_path)
    assert "not a plain state dict" in out and "weights_only" in out


def test_missing_optional_package_is_named(tmp_path: Path, ct_crop: Path, monkeypatch) -> None:
    import medxai.models.monai_bundle as mb

    real = mb._module_available
    monkeypatch.setattr(mb, "_module_available", lambda name: name != "skimage" and real(name))
    bundle_dir = zoo_bundle(tmp_path, "prostate_mri_anatomy")  # KeepLargestConnectedComponentd
    out = _refused(bundle_dir, ct_crop, tmp_path)
    assert "needs the package 'scikit-image'" in out and "pip install scikit-image" in out


def test_missing_package_in_a_target_is_named(spleen: Path, ct_crop: Path, tmp_path: Path
                                              ) -> None:
    def edit(c: dict) -> None:
        c["postprocessing"]["transforms"].insert(0, {"_target_": "medxai_absent_pkg.Transformd",
                                                     "keys": "pred"})

    out = _refused(_bad_copy(spleen, tmp_path, edit), ct_crop, tmp_path)
    assert "medxai_absent_pkg" in out


# ---------------------------------------------------------------------------------------------
# TorchScript, saliency, describe
# ---------------------------------------------------------------------------------------------

TINY = {
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [4, 8], "strides": [2], "num_res_units": 0},
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164,
         "b_min": 0, "b_max": 1, "clip": True}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2,
                "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
         "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"}]},
}


@pytest.fixture(scope="module")
def tiny_pair(work: Path) -> tuple[Path, Path]:
    """A small bundle (a user's own) as a state dict and as TorchScript (no network_def)."""
    pt_dir, ts_dir = work / "tiny_pt", work / "tiny_ts"
    for d in (pt_dir, ts_dir):
        (d / "configs").mkdir(parents=True)
        (d / "models").mkdir()
        (d / "configs" / "metadata.json").write_text(json.dumps({
            "name": "tiny spleen", "version": "0.1",
            "network_data_format": {"inputs": {"image": {"num_channels": 1, "modality": "CT"}},
                                    "outputs": {"pred": {"channel_def": {"0": "background",
                                                                         "1": "spleen"}}}}}))
    cfg = copy.deepcopy(TINY)
    (pt_dir / "configs" / "inference.json").write_text(json.dumps(cfg))
    ts_cfg = {k: v for k, v in cfg.items() if k != "network_def"}
    (ts_dir / "configs" / "inference.json").write_text(json.dumps(ts_cfg))
    torch.manual_seed(3)
    p = _parser(pt_dir)
    net = p.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), pt_dir / "models" / "model.pt")
    torch.jit.script(net).save(str(ts_dir / "models" / "model.ts"))
    return pt_dir, ts_dir


def test_torchscript_equals_module_and_refuses_gradcam(tiny_pair, ct_crop: Path, tmp_path: Path
                                                       ) -> None:
    pt_dir, ts_dir = tiny_pair
    a, aff_a, b_pt = _medxai_labels(pt_dir, ct_crop)
    b, aff_b, b_ts = _medxai_labels(ts_dir, ct_crop)
    assert b_ts.contract.weights == "torchscript" and not b_ts.contract.layer_hooks
    assert b_ts.saliency_methods == ("smoothgrad", "occlusion", "ig")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(aff_a, aff_b)
    code, out = run_cli("segment", str(ct_crop), "--model", str(ts_dir), "-o",
                        str(tmp_path / "o"), "--device", "cpu", "--explain", "gradcam")
    assert code == 2, out
    assert "needs layer hooks" in out and "occlusion" in out and "ig" in out
    assert not (tmp_path / "o" / "ct_crop").exists()


@pytest.mark.parametrize("method", ["occlusion", "ig"])
def test_torchscript_saliency_on_input_grid(tiny_pair, ct_crop: Path, tmp_path: Path,
                                            method: str) -> None:
    _, ts_dir = tiny_pair
    code, out = run_cli("segment", str(ct_crop), "--model", str(ts_dir), "-o", str(tmp_path),
                        "--device", "cpu", "--explain", method)
    assert code == 0, out
    sal = nib.load(str(tmp_path / "ct_crop" / "saliency_spleen.nii.gz"))
    src = nib.load(str(ct_crop))
    assert sal.shape == src.shape
    np.testing.assert_allclose(sal.affine, src.affine, atol=1e-5)
    arr = np.asarray(sal.dataobj)
    assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1


def test_gradcam_on_state_dict_bundle(tiny_pair, ct_crop: Path, tmp_path: Path) -> None:
    pt_dir, _ = tiny_pair
    code, out = run_cli("segment", str(ct_crop), "--model", str(pt_dir), "-o", str(tmp_path),
                        "--device", "cpu", "--explain", "gradcam")
    assert code == 0, out
    folder = tmp_path / "ct_crop"
    report = json.loads((folder / "report.json").read_text())["saliency"]
    assert report["method"] == "gradcam" and report["layer"] == "model.1 (default)"
    sal = nib.load(str(folder / "saliency_spleen.nii.gz"))
    src = nib.load(str(ct_crop))
    assert sal.shape == src.shape
    np.testing.assert_allclose(sal.affine, src.affine, atol=1e-5)
    arr = np.asarray(sal.get_fdata())
    # scaled to 1 on the model grid, resampled to the input's: measured max 0.978
    assert np.isfinite(arr).all() and arr.min() >= 0 and 0.9 < arr.max() <= 1
    assert np.mean(arr > 0.05) > 0.01  # not empty, not one hot voxel
    # the file is the map the report measured: its share of saliency inside the spleen label
    labels = np.asarray(nib.load(str(folder / "labels.nii.gz")).dataobj)
    assert labels.any()
    share = float(arr[labels == 1].sum() / arr.sum())
    assert abs(share - report["energy_in_mask"]["1"]) < 0.02, (share, report["energy_in_mask"])


def test_models_describe(spleen: Path, tiny_pair) -> None:
    code, out = run_cli("models", "describe", str(spleen), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["network"] == "UNet" and info["parameters"] > 4_000_000
    assert info["input"] == {"spatial_dims": 3, "channels": 1, "channel_names": ["image"],
                             "modalities": ["CT"]}
    assert info["inferer"]["class"] == "SlidingWindowInferer"
    # the bundle's own LoadImaged runs, with medxai's reader
    assert info["preprocessing"][0] == "LoadImaged"
    assert info["preprocessing"][3].startswith("Spacingd(pixdim=[1.5, 1.5, 2.0]")
    assert any(r.startswith("LoadImaged reader -> medxai's reader")
               for r in info["replaced_by_medxai"])
    assert info["saliency_default"]["method"] == "gradcam"
    assert info["saliency_default"]["layer"] == "model.1"
    assert info["saliency_default"]["reason"].startswith("UNet")
    assert info["saliency_methods"] == ["gradcam", "gradcampp", "hirescam", "layercam",
                                        "smoothgrad", "occlusion", "ig"]
    code, out = run_cli("models", "describe", str(tiny_pair[1]))
    assert code == 0, out
    assert "torchscript" in out and "occlusion, ig" in out
