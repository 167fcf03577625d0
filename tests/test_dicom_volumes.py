"""Several volumes in one series or one enhanced object, split as dcm2niix splits them.

The inputs are real headers: a real MR series (the hippocampus study) given a second echo, a
real Philips Enhanced MR (nibabel's test file, pixels zeroed there and filled here with a
pattern that differs per frame) given a second echo, and two real Siemens DWI mosaics of one
series (b=0 and b=1000, nibabel's test files, pixels filled likewise). dcm2niix converts the
same files; its file list and voxels are the reference.
"""

from __future__ import annotations

import copy
import gzip
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from medxai.io.dicom.volumes import split_volumes
from medxai.io.readers import list_volumes, load_image
from tests.conftest import require_tool, shared_path

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")

NIBABEL_DATA = Path(__import__("nibabel").__file__).parent / "nicom" / "tests" / "data"


def _nibabel_file(name: str, dest: Path) -> Path:
    src = NIBABEL_DATA / f"{name}.dcm.gz"
    if not src.is_file():
        pytest.skip(f"nibabel's test file {src} is not installed")
    out = dest / f"{name}.dcm"
    out.write_bytes(gzip.decompress(src.read_bytes()))
    return out


def _pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A deterministic uint16 pattern, different for every frame and seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape, dtype=np.uint16)


def _new_uid(ds: pydicom.Dataset, *parts: str) -> None:
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), *parts])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


@pytest.fixture(scope="module")
def echo_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hippocampus crop series (32 MR slices) as two echoes: echo 2 holds half the values."""
    src = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    out = tmp_path_factory.mktemp("echoes")
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(str(f))
        for echo in (1, 2):
            e = copy.deepcopy(ds)
            e.EchoNumbers = echo
            e.EchoTime = 4.5 * echo
            _new_uid(e, f"echo{echo}")
            if echo == 2:
                e.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
            e.save_as(str(out / f"{f.stem}_e{echo}.dcm"))
    return out


@pytest.fixture(scope="module")
def enhanced_two_echoes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nibabel's Philips Enhanced MR (one T1 volume) cut to 8 frames and given a second echo
    (per-frame MR Echo Sequence, dimension index on EffectiveEchoTime), frames of echo 2 stored
    before those of echo 1 and in reverse slice order, so that neither frame order is trusted."""
    work = tmp_path_factory.mktemp("enhanced")
    ds = pydicom.dcmread(str(_nibabel_file("philips_mprage", work)))
    n, first = 8, 80
    source = ds.PerFrameFunctionalGroupsSequence
    items, pixels = [], []
    for echo in (2, 1):
        for i in reversed(range(n)):
            it = copy.deepcopy(source[first + i])
            it.MREchoSequence[0].EffectiveEchoTime = 3.513 * echo
            it.FrameContentSequence[0].InStackPositionNumber = i + 1
            it.FrameContentSequence[0].DimensionIndexValues = [echo, 1, i + 1]
            items.append(it)
            pixels.append(_pattern((256, 256), 100 * echo + i))
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    dim = copy.deepcopy(ds.DimensionIndexSequence[0])
    dim.DimensionIndexPointer = Tag("EffectiveEchoTime")
    dim.FunctionalGroupPointer = Tag("MREchoSequence")
    dim.DimensionDescriptionLabel = "Effective Echo Time"
    ds.DimensionIndexSequence = Sequence([dim, *ds.DimensionIndexSequence])
    ds.NumberOfFrames = len(pixels)
    ds.PixelData = np.stack(pixels).astype(np.uint16).tobytes()
    _new_uid(ds, "two-echoes")
    # Philips private per-frame copies would still say "176 slices, one echo": dcm2niix reads them
    ds.remove_private_tags()
    for it in ds.PerFrameFunctionalGroupsSequence:
        it.remove_private_tags()
    out = work / "enh" / "enhanced_2echo.dcm"
    out.parent.mkdir()
    ds.save_as(str(out))
    return out


@pytest.fixture(scope="module")
def dwi_mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nibabel's two Siemens DWI mosaics of one series (b=0, b=1000; same slice positions),
    their zeroed pixels filled with a pattern (b=1000 half of b=0)."""
    work = tmp_path_factory.mktemp("dwi")
    out = work / "dwi"
    out.mkdir()
    base = None
    for name in ("siemens_dwi_0", "siemens_dwi_1000"):
        ds = pydicom.dcmread(str(_nibabel_file(name, work)))
        if base is None:
            base = _pattern((int(ds.Rows), int(ds.Columns)), 7)
        px = base if name.endswith("_0") else base // 2
        ds.PixelData = px.astype(np.uint16).tobytes()
        ds.save_as(str(out / f"{name}.dcm"))
    return out


def _dcm2niix(src: Path, out: Path) -> dict[str, object]:
    """dcm2niix's files for ``src`` (``-f %s_%e``), as {name: nibabel image}."""
    import nibabel as nib

    tool = require_tool("dcm2niix")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([tool, "-b", "n", "-z", "n", "-f", "%s_%e", "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=120)
    return {p.stem: nib.load(str(p)) for p in sorted(out.glob("*.nii"))}


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float64), affine))
    return np.asarray(img.dataobj), img.affine


def _assert_same_volume(loaded, ref_data: np.ndarray, ref_affine: np.ndarray) -> None:
    ours, our_aff = _canonical(loaded.image[0].numpy(), loaded.image.affine.numpy())
    theirs, their_aff = _canonical(ref_data, ref_affine)
    np.testing.assert_allclose(our_aff, their_aff, atol=1e-3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_echo_series_splits_like_dcm2niix(echo_series: Path, tmp_path: Path) -> None:
    vols = list_volumes(echo_series)
    assert [(v.index, v.label, v.key, len(v.members)) for v in vols] == [
        (1, "echo1", {"EchoNumbers": "1"}, 32), (2, "echo2", {"EchoNumbers": "2"}, 32)]
    ref = _dcm2niix(echo_series, tmp_path / "d2n")
    # dcm2niix: one file per echo, suffixed with the echo number
    assert sorted(ref) == sorted(f"{next(iter(ref)).rsplit('_', 1)[0]}_{e}" for e in (1, 2))
    for v in vols:
        loaded = load_image(echo_series, volume=v.index)
        assert loaded.image.meta["volume"] == {**v.to_dict(), "count": 2}
        name = next(n for n in ref if n.endswith(f"_{v.key['EchoNumbers']}"))
        img = ref[name]
        _assert_same_volume(loaded, img.get_fdata(), img.affine)


def test_series_of_several_volumes_without_a_choice_lists_them(echo_series: Path) -> None:
    from medxai.errors import SeriesError

    with pytest.raises(SeriesError) as err:
        load_image(echo_series)
    assert "2 volumes" in err.value.detail and "EchoNumbers" in err.value.detail
    assert "1: echo1, 2: echo2" in err.value.detail
    assert err.value.hint and "--volume" in err.value.hint
    with pytest.raises(SeriesError, match="no volume 3"):
        load_image(echo_series, volume=3)


def test_enhanced_two_echoes_split_like_dcm2niix(enhanced_two_echoes: Path,
                                                tmp_path: Path) -> None:
    vols = list_volumes(enhanced_two_echoes)
    assert [(v.label, v.key) for v in vols] == [
        ("echo1", {"EffectiveEchoTime": "3.513"}), ("echo2", {"EffectiveEchoTime": "7.026"})]
    ref = _dcm2niix(enhanced_two_echoes.parent, tmp_path / "d2n")
    assert len(ref) == 2 and sorted(n[-2:] for n in ref) == ["_1", "_2"]
    for v, name in zip(vols, sorted(ref)):
        loaded = load_image(enhanced_two_echoes, volume=v.index)
        assert loaded.image.shape[1:] == (256, 256, 8)
        # the frames of this echo, by frame number, and nothing of the other echo
        assert len(loaded.dicom.frame_numbers) == 8
        assert set(loaded.dicom.frame_numbers) == {m + 1 for m in v.members}
        _assert_same_volume(loaded, ref[name].get_fdata(), ref[name].affine)


def test_dwi_mosaics_split_by_b_value_like_dcm2niix_volumes(dwi_mosaics: Path,
                                                            tmp_path: Path) -> None:
    vols = list_volumes(dwi_mosaics)
    assert [(v.label, v.key) for v in vols] == [
        ("b0", {"DiffusionBValue": "0"}), ("b1000", {"DiffusionBValue": "1000"})]
    ref = _dcm2niix(dwi_mosaics, tmp_path / "d2n")
    # dcm2niix keeps diffusion volumes in one 4D file, in b-value order here
    (img,) = ref.values()
    data = img.get_fdata()
    assert data.shape == (128, 128, 48, 2)
    for v in vols:
        loaded = load_image(dwi_mosaics, volume=v.index)
        assert loaded.image.meta["medxai_form"] == "dicom-mosaic"
        _assert_same_volume(loaded, data[..., v.index - 1], img.affine)


def test_one_volume_inputs_have_one_unlabelled_volume() -> None:
    ct = shared_path("dicom", "dcmqi_data", "data", "segmentations", "ct-3slice")
    (v,) = list_volumes(ct)
    assert v.label == "" and "volume" not in load_image(ct).image.meta


def test_split_leaves_per_slice_attributes_alone() -> None:
    # a trigger time that differs per slice does not cut one volume into slices; the echo does
    positions = [[0, 0, z] for z in (0, 1, 2)] * 2
    attrs = [{"TriggerTime": str(i), "EchoNumbers": str(1 + i // 3)} for i in range(6)]
    vols = split_volumes(positions, attrs)
    assert [(v.label, v.members) for v in vols] == [("echo1", (0, 1, 2)), ("echo2", (3, 4, 5))]
    # b-values first, then directions within the b=1000 shell
    positions = [[0, 0, z] for z in (0, 1)] * 3
    attrs = [{"DiffusionBValue": b, "DiffusionGradientOrientation": d}
             for b, d in [("0", ""), ("0", ""), ("1000", "1\\0\\0"), ("1000", "1\\0\\0"),
                          ("1000", "0\\1\\0"), ("1000", "0\\1\\0")]]
    assert [v.label for v in split_volumes(positions, attrs)] == ["b0", "b1000_dir1",
                                                                   "b1000_dir2"]
    # nothing tells duplicates apart: one volume (the reader reports the shared positions)
    assert len(split_volumes([[0, 0, 0], [0, 0, 0]], [{}, {}])) == 1


# ---------------------------------------------------------------------------------------------
# info and segment
# ---------------------------------------------------------------------------------------------

def _cli(*args: str):
    from click.testing import CliRunner

    from medxai.cli.main import cli

    return CliRunner().invoke(cli, list(args))


def test_info_lists_the_volumes(echo_series: Path, dwi_mosaics: Path) -> None:
    import json

    res = _cli("info", "--json", str(echo_series))
    assert res.exit_code == 0, res.output
    info = json.loads(res.output[res.output.index("{"):])
    assert [(v["index"], v["label"], v["key"], v["slices"]) for v in info["volumes"]] == [
        (1, "echo1", {"EchoNumbers": "1"}, 32), (2, "echo2", {"EchoNumbers": "2"}, 32)]
    assert info["shape"] == [35, 51, 32] and "2 volumes" in info["note"]
    text = _cli("info", str(dwi_mosaics)).output
    assert "volume   1     b0: DiffusionBValue 0" in text
    assert "volume   2     b1000: DiffusionBValue 1000" in text


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3D model trained by medxai train (for CT; given explicitly it takes any volume)."""
    from tests.models import train_volume_model

    return train_volume_model(tmp_path_factory.mktemp("volume_model"), spacing=[4.0, 4.0, 4.0])


def _report(folder: Path) -> dict:
    import json

    return json.loads((folder / "report.json").read_text())


def test_segment_does_each_volume_into_its_own_folder(echo_series: Path, volume_model: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli("segment", "-q", "--model", str(volume_model), "--device", "cpu", "--explain",
               "none", "--format", "nifti,json", "-o", str(out), str(echo_series))
    assert res.exit_code == 0, res.output
    name = echo_series.name
    assert sorted(p.name for p in out.iterdir()) == [f"{name}_echo1", f"{name}_echo2"]
    for index, label in ((1, "echo1"), (2, "echo2")):
        vol = _report(out / f"{name}_{label}")["input"]["volume"]
        assert vol == {"index": index, "label": label, "key": {"EchoNumbers": str(index)},
                       "slices": 32, "count": 2}
    # the two folders hold the two echoes' label maps on the same grid
    import nibabel as nib

    a, b = (nib.load(str(out / f"{name}_{e}" / "labels.nii.gz")) for e in ("echo1", "echo2"))
    np.testing.assert_allclose(a.affine, b.affine)


def test_segment_volume_option_picks_one(echo_series: Path, volume_model: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli("segment", "-q", "--model", str(volume_model), "--device", "cpu", "--explain",
               "none", "--format", "json", "--volume", "2", "-o", str(out), str(echo_series))
    assert res.exit_code == 0, res.output
    (only,) = out.iterdir()
    assert only.name == f"{echo_series.name}_echo2"
    assert _report(only)["input"]["volume"]["key"] == {"EchoNumbers": "2"}
    bad = _cli("segment", "-q", "--model", str(volume_model), "--volume", "3", "-o",
               str(tmp_path / "o2"), str(echo_series))
    assert bad.exit_code == 2 and "there is no volume 3" in bad.output
    assert _cli("segment", "--volume", "x", str(echo_series)).exit_code == 2


def test_batch_scan_and_reader_split_alike(echo_series: Path, dwi_mosaics: Path) -> None:
    """One splitter: the batch scanner's stacks are the reader's volumes, file for file."""
    from medxai.batch.scan import scan_export
    from medxai.io.readers import load_dicom_files

    for folder in (echo_series, dwi_mosaics):
        stacks = scan_export(folder, workers=1).stacks
        volumes = list_volumes(folder)
        assert len(stacks) == len(volumes) == 2
        theirs = sorted(sorted(s.files) for s in stacks)
        ours = sorted(sorted(p.name for p in load_image(folder, volume=v.index).dicom.paths)
                      for v in volumes)
        assert theirs == ours
        for s in stacks:  # each stack reads as one volume of its own
            loaded = load_dicom_files(folder, [folder / f for f in s.files])
            assert "volume" not in loaded.image.meta
