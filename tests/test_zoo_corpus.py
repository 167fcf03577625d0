"""Every bundle folder in ../shared/data/model_zoo, through medxai and through plain MONAI.

Parametrized over the folders found there: a bundle folder dropped in is tested without a code
change. For each: ``medxai models describe``; then either it is refused in one line (exit 2, no
traceback, nothing written) or ``medxai segment`` runs it on a real small input of its modality
(a cropped CT DICOM series, a cropped MR volume, or cropped NIfTI sequences for a multi-channel
bundle), its
label map equals plain MONAI's voxel for voxel, and the DICOM SEG passes dciodvfy. Saliency runs
on every bundle that runs, with the layer (or the gradient-free fallback) and the reason medxai
chose.

Weights: the zoo's are not here. Each bundle's ``network_def`` is built with ``ConfigParser`` and
saved seeded (the last layer's bias balanced on the input so that the seeded network labels part
of it). A DiNTS bundle's architecture file (``arch_ckpt_path``) is made by a seeded
``TopologySearch`` decode whose path weights favour the finest depth (a light network).

Plain MONAI is the bundle's own ``LoadImaged`` (on a temporary NIfTI of the same volume, or one
NIfTI per channel), preprocessing, ``inferer`` and postprocessing, run as ``SupervisedEvaluator``
runs them, with the overrides a plain MONAI user on a CPU machine needs: ``torch.device('cuda')``
in the config's expressions becomes the CPU and ``torch.load`` gets ``weights_only=False``
(the DiNTS configs load their architecture file with ``map_location=torch.device('cuda')``).
Compute is kept small for 2 CPU cores: the sliding-window ``roi_size`` is the smallest of 32^3 /
64^3 / the config's that the network takes (the same override, written into the copied config,
for medxai and for plain MONAI).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import SHARED, shared_path
from tests.helpers_dicom import assert_dciodvfy_clean, crop_dicom_series, find_tool

ZOO = SHARED / "model_zoo"
CT_DICOM = ("dicom", "totalsegmentator_tests", "tests", "reference_files", "example_ct_dicom")
MR_DICOM = ("hippocampus", "dicom_study1", "13_HCropVolume")
BUNDLES = sorted(p.name for p in ZOO.iterdir() if (p / "configs").is_dir()) if ZOO.is_dir() else []
#: zoo-sized networks on 2 loaded cores: seconds to a minute each
SLOW = {"wholeBrainSeg_Large_UNEST_segmentation", "renalStructures_UNEST_segmentation",
        "multi_organ_segmentation", "pancreas_ct_dints_segmentation",
        "wholeBody_ct_segmentation"}
pytestmark = pytest.mark.shared_data
#: the zoo bundles medxai refuses, and the words of the reason (docs/bundles.md has the table);
#: a new folder that is refused is reported as xfail with its one line
REFUSED = {"spleen_deepedit_annotation": "interactive bundle",
           "renalStructures_CECT_segmentation": "reads 4 files per case"}


def _params() -> list:
    return [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in BUNDLES]


# ---------------------------------------------------------------------------------------------
# the bundle folder: configs, scripts, seeded weights
# ---------------------------------------------------------------------------------------------

def _config_path(root: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise FileNotFoundError(root / "configs" / "inference.json")


def _read(path: Path) -> dict:
    import yaml

    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _write(path: Path, cfg: dict) -> None:
    import yaml

    path.write_text(json.dumps(cfg, indent=1) if path.suffix == ".json" else yaml.safe_dump(cfg))


_CUDA = re.compile(r"torch\.device\(\s*(['\"])cuda(:\d+)?\1\s*\)")


def plain_parser(root: Path):
    """``ConfigParser`` of the bundle as a plain MONAI user on a CPU machine sets it up:
    ``bundle_root``, the folder on ``sys.path`` (as ``monai.bundle run`` puts it), and the
    CUDA-only expressions overridden (``torch.device('cuda')`` -> CPU, ``torch.load(...)`` with
    ``weights_only=False``: the DiNTS architecture file holds numpy arrays)."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(_config_path(root)))
    p["bundle_root"] = str(root)

    def visit(node, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            cid = f"{prefix}#{k}" if prefix else str(k)
            if isinstance(v, (dict, list)):
                visit(v, cid)
            elif isinstance(v, str) and v.startswith("$") and not cid.startswith("imports"):
                new = _CUDA.sub("torch.device('cpu')", v)
                if "torch.load(" in new and "weights_only" not in new:
                    new = re.sub(r"\)\s*$", ", weights_only=False)", new)
                if new != v:
                    p[cid] = new

    visit(p.get(), "")
    return p


def _forget_scripts(root: Path) -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))


def _light_dints_arch(path: Path, parser, seed: int = 0) -> None:
    """A seeded DiNTS architecture (``node_a``, ``arch_code_a``, ``arch_code_c``) from
    ``TopologySearch.decode``, its path weights favouring the finest depth (cells at full
    resolution only: a light network for 2 CPU cores)."""
    from monai.networks.nets import TopologySearch

    space = parser.get("dints_space")
    torch.manual_seed(seed)
    search = TopologySearch(channel_mul=0.0625, num_blocks=int(space["num_blocks"]),
                            num_depths=int(space["num_depths"]),
                            use_downsample=bool(space.get("use_downsample", True)))
    fine = torch.tensor([float(i == 0 and o == 0) for i, o in
                         zip(search.arch_code2in, search.arch_code2out)])
    with torch.no_grad():
        search.log_alpha_a.copy_(6 * fine - 3 + 0.1 * torch.randn_like(search.log_alpha_a))
    node_a, arch_a, arch_c, arch_a_max = search.decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"node_a": node_a, "arch_code_a": arch_a, "arch_code_a_max": arch_a_max,
                "arch_code_c": arch_c}, str(path))


def _sliding(cfg: dict) -> bool:
    inferer = cfg.get("inferer") or {}
    return isinstance(inferer, dict) and "SlidingWindow" in str(inferer.get("_target_", ""))


def seeded_bundle(name: str, tmp: Path, calib) -> Path:
    """A copy of the zoo bundle (configs, scripts, docs) with seeded weights in ``tmp/name``;
    the roi override (the smallest the network takes) is written into the copied config."""
    src = ZOO / name
    dst = tmp / name
    shutil.copytree(src / "configs", dst / "configs")
    if (src / "scripts").is_dir():
        shutil.copytree(src / "scripts", dst / "scripts")
    (dst / "models").mkdir()
    _forget_scripts(dst)
    try:
        p = plain_parser(dst)
        if "arch_ckpt_path" in p.get():
            _light_dints_arch(Path(p.get_parsed_content("arch_ckpt_path")), p)
        torch.manual_seed(0)
        try:
            net = p.get_parsed_content("network_def").eval()
        except Exception:  # built the same way by medxai, which must refuse it in one line
            return dst
        cfg_path = _config_path(dst)
        cfg = _read(cfg_path)
        if _sliding(cfg):
            roi = list(cfg["inferer"]["roi_size"])
            for size in (32, 64):
                if size >= max(roi):
                    break
                try:
                    with torch.no_grad():
                        net(torch.zeros(1, int(_in_channels(p)), *([size] * len(roi))))
                except Exception:
                    continue
                cfg["inferer"]["roi_size"] = [size] * len(roi)
                cfg["inferer"]["sw_batch_size"] = 1
                break
            _write(cfg_path, cfg)
        if calib is not None:
            try:
                _balance(net, dst, calib(dst))
            except Exception:  # a bundle plain MONAI cannot run on this input: refused
                pass
        torch.save(net.state_dict(), dst / "models" / "model.pt")
    finally:
        sys.path.remove(str(dst))
    return dst


def _in_channels(parser) -> int:
    net_def = parser.get("network_def") or {}
    given = net_def.get("in_channels") if isinstance(net_def, dict) else None
    return int(parser.get_parsed_content("network_def#in_channels")) if given is not None else 1


def _balance(net: torch.nn.Module, root: Path, image) -> None:
    """Shift the last convolution's bias so that each foreground channel wins on about a third
    of the model grid (softmax: against channel 0; sigmoid: above 0)."""
    from monai.data import list_data_collate

    p = plain_parser(root)
    pre, inferer = p.get_parsed_content("preprocessing"), p.get_parsed_content("inferer")
    data = pre({"image": image})
    x = list_data_collate([data])["image"].as_tensor().float()
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d,
                                                        torch.nn.ConvTranspose3d))]
    last = convs[-1].bias if convs else None
    if last is None:
        return
    sigmoid = "sigmoid" in json.dumps(p.get("postprocessing"))
    with torch.no_grad():
        logits = inferer(x, net)
        if logits.shape[1] != last.shape[0]:
            return
        for k in range(0 if sigmoid else 1, logits.shape[1]):
            d = logits[0, k] - (0 if sigmoid else logits[0, 0])
            d = d.flatten()[:: max(1, d.numel() // 100000)]
            last[k] -= float(torch.quantile(d, 0.67))


# ---------------------------------------------------------------------------------------------
# inputs: a real small volume of the bundle's modality, as DICOM and as NIfTI
# ---------------------------------------------------------------------------------------------

def _modality(name: str) -> tuple[str, int]:
    meta = json.loads((ZOO / name / "configs" / "metadata.json").read_text())
    image = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
    modality = str(image.get("modality", "CT")).upper()
    return ("MR" if modality.startswith("MR") else "CT"), int(image.get("num_channels", 1) or 1)


def _crop_ct_series(dst: Path) -> Path:
    """The real CT series cropped to 32x32 in-plane and 16 slices (sizes that 8-divisible
    whole-image networks take; one 32^3 window at 1 mm), written uncompressed (positions moved
    with the crop)."""
    return crop_dicom_series(shared_path(*CT_DICOM), dst, slice(240, 272), slice(210, 242),
                             first=16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_inputs(tmp_path_factory.mktemp("zoo_inputs"))


def make_inputs(work: Path) -> dict:
    """Per modality (``CT``, ``MR``): ``(DICOM series or None, NIfTI)``, the DICOM series medxai
    segments and a NIfTI of the same volume (medxai's reading of it: same array and affine)
    for plain MONAI (the MR series is cut to its middle 16x24x16, as NIfTI only)."""
    from medxai.io.readers import load_image

    out: dict = {}
    ct = _crop_ct_series(work / "ct_series")
    mr = work / "mr_series"
    shutil.copytree(shared_path(*MR_DICOM), mr)
    for key, series in (("CT", ct), ("MR", mr)):
        img = load_image(series).image
        arr, affine = img[0].numpy(), img.affine.numpy()
        if key == "MR":  # 35x51x32: the middle 16x24x16 (8-divisible; 0.5 mm bundles: 32x48x32)
            arr = arr[8:24, 12:36, 8:24]
            affine = affine @ np.array([[1, 0, 0, 8], [0, 1, 0, 12], [0, 0, 1, 8], [0, 0, 0, 1]])
            shutil.rmtree(series)
            series = None
        nifti = work / f"{key.lower()}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), str(nifti))
        out[key] = (series, nifti)
    return out


def _channel_files(nifti: Path, n: int) -> list[Path]:
    """``n`` single-channel NIfTIs (the one sequence, scaled differently per channel)."""
    img = nib.load(str(nifti))
    data = np.asarray(img.dataobj).astype(np.float32)
    files = []
    for c in range(n):
        files.append(nifti.with_name(f"{nifti.name[:-7]}_ch{c}.nii.gz"))
        nib.save(nib.Nifti1Image(data * (1.0 - 0.15 * c), img.affine), str(files[-1]))
    return files


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------

def run_cli(*args: str) -> tuple[int, str, BaseException | None]:
    from click.testing import CliRunner

    from medxai.cli.main import cli

    res = CliRunner().invoke(cli, list(args))
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return res.exit_code, res.output, exc


def plain_monai_labels(root: Path, image) -> np.ndarray:
    """The bundle run by plain MONAI: its LoadImaged, preprocessing, inferer, postprocessing
    (without SaveImaged), as SupervisedEvaluator runs them."""
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import Compose

    _forget_scripts(root)
    try:
        p = plain_parser(root)
        net = p.get_parsed_content("network_def")
        net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
        net.eval()
        pre, inferer = p.get_parsed_content("preprocessing"), p.get_parsed_content("inferer")
        post = p.get_parsed_content("postprocessing")
        post = Compose([t for t in post.transforms if type(t).__name__ != "SaveImaged"])
        batch = list_data_collate([pre({"image": image})])
        with torch.no_grad():
            batch["pred"] = inferer(batch["image"], net)
        out = post(decollate_batch(batch, detach=True)[0])["pred"]
    finally:
        sys.path.remove(str(root))
    return np.asarray(out)[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", _params())
def test_zoo_bundle(name: str, inputs: dict, work: Path, tmp_path: Path) -> None:
    modality, channels = _modality(name)
    series, nifti = inputs[modality]
    files = _channel_files(nifti, channels) if channels > 1 else None
    plain_input = [str(f) for f in files] if files else str(nifti)
    root = seeded_bundle(name, work, calib=lambda _root: plain_input)

    # describe: either the bundle's description, or its one-line refusal
    code, out, exc = run_cli("models", "describe", str(root))
    if code != 0:
        assert code == 2 and exc is None, (code, out, exc)
        assert "Traceback" not in out and len(out.strip().splitlines()) <= 2, out
        # segment is refused the same way, and writes nothing
        dest = tmp_path / "out"
        code2, out2, exc2 = run_cli("segment", str(series or nifti), "--model", str(root),
                                    "-o", str(dest), "--explain", "none")
        assert code2 == 2 and exc2 is None and "Traceback" not in out2, out2
        assert not dest.exists() or not any(dest.rglob("*")), list(dest.rglob("*"))
        if name in REFUSED:
            assert REFUSED[name] in out and REFUSED[name] in out2, out
            return
        pytest.xfail(f"refused: {out.strip().splitlines()[0]}")  # a new folder: say why
    assert name not in REFUSED, f"{name} runs now: take it out of REFUSED"
    assert "saliency default:" in out, out

    dest = tmp_path / "out"
    args = ["segment", *(["--channels", *map(str, files)] if files else [str(series or nifti)]),
            "--model", str(root), "-o", str(dest), "--explain", "none", "--device", "cpu"]
    code, out, exc = run_cli(*args)
    assert code == 0 and exc is None, (out, exc)
    (labels_file,) = dest.rglob("labels.nii.gz")
    ours = np.asarray(nib.load(str(labels_file)).dataobj)
    ref = plain_monai_labels(root, plain_input)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert len(np.unique(ref)) > 1  # the seeded network labels part of the input
    np.testing.assert_array_equal(ours, ref.astype(ours.dtype))
    if series is not None and not files:
        (seg,) = dest.rglob("seg.dcm")
        if find_tool("dciodvfy"):
            assert_dciodvfy_clean(seg)


@pytest.mark.parametrize("name", _params())
def test_zoo_saliency(name: str, inputs: dict, work: Path) -> None:
    """Saliency on every bundle that runs: the layer medxai chose (or the gradient-free
    fallback) and why, on one foreground label, on the input grid."""
    from medxai.errors import ModelError
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model
    from medxai.pipeline import SegmentOptions, compute_saliency, resolve_explain

    modality, channels = _modality(name)
    root = work / name
    if not (root / "models" / "model.pt").is_file():
        pytest.skip("the bundle test did not make its weights (run test_zoo_bundle first)")
    try:
        bundle = load_model(root)
    except ModelError as exc:
        if name in REFUSED:
            assert REFUSED[name] in str(exc)
            return
        pytest.xfail(f"refused: {exc}")
    series, nifti = inputs[modality]
    if channels > 1:
        from medxai.io.channels import load_channels

        loaded = load_channels(_channel_files(nifti, channels))
    else:
        loaded = load_image(nifti)
    settings = resolve_explain(bundle, SegmentOptions(explain="auto"))
    spec = bundle.contract.saliency
    assert spec.reason, spec
    if settings.method == "occlusion":
        assert "gradient-free" in spec.reason
    else:
        assert settings.method == "gradcam" and settings.layer == spec.layer
    out_channels = max(lab.value for lab in bundle.contract.labels)
    value = next(lab.value for lab in bundle.contract.foreground_labels if lab.value <= out_channels)
    sal = compute_saliency(bundle, loaded, settings.method, value, torch.device("cpu"),
                           None, None, layer=settings.layer, target="segment")
    assert tuple(sal.shape[1:]) == tuple(loaded.image.shape[1:])
    assert torch.isfinite(sal).all() and float(sal.max()) > 0


@pytest.mark.parametrize("make,layer", [
    (lambda: __import__("monai.networks.nets", fromlist=["SegResNet"]).SegResNet(
        spatial_dims=2, in_channels=1, out_channels=2, init_filters=8), "down_layers.3"),
    (lambda: __import__("monai.networks.nets", fromlist=["DynUNet"]).DynUNet(
        2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2]), "bottleneck"),
    (lambda: __import__("monai.networks.nets", fromlist=["FlexibleUNet"]).FlexibleUNet(
        in_channels=1, out_channels=2, backbone="efficientnet-b0", pretrained=False,
        spatial_dims=2), "decoder.blocks.0"),
    (lambda: __import__("monai.networks.nets", fromlist=["AttentionUnet"]).AttentionUnet(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,)), None),
])
def test_cam_layer_choice_on_zoo_architectures(make, layer) -> None:
    """The layer medxai picks for a network it does not know runs in the forward pass (a CAM
    at it is not empty); a network it knows nothing of gets None and the gradient-free reason."""
    from medxai.explain import explain
    from medxai.explain.layers import cam_layer_choice

    torch.manual_seed(0)
    net = make().eval()
    chosen, reason = cam_layer_choice(net)
    assert chosen == layer, (chosen, reason)
    if layer is None:
        assert "gradient-free" in reason
        return
    assert type(net).__name__ in reason
    sal = explain(net, torch.rand(1, 1, 64, 64), "gradcam", 1, layer=chosen)
    assert tuple(sal.shape[-2:]) == (64, 64) and torch.isfinite(sal).all()
