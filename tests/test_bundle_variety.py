"""MONAI bundles written the many ways people write them, through ``medxai segment``.

Each case builds, in a temporary folder, a bundle in the style of the MONAI tutorials and the
model zoo (JSON or YAML, ``imports``, ``@`` references and ``$`` expressions, keys pointing at
paths that do not exist, ``dataset``/``evaluator``/``handlers`` sections that are never built,
``LoadImaged``/transform/inferer/network/weights variants) with seeded weights, and checks:

- ``medxai models describe`` works;
- ``medxai segment`` (the CLI) runs on a small real input of the right kind (a NIfTI crop of a
  real CT, a crop of a real CT DICOM series, an RGB dermoscopy photo as PNG and as JPEG, a grey
  chest X-ray PNG), and its label map equals plain MONAI's run of the same config
  (``ConfigParser``: preprocessing -> inferer -> postprocessing, as ``SupervisedEvaluator`` runs
  them, ``SaveImaged`` left out) voxel for voxel;
- or, where medxai cannot run it, that it is refused in one line: exit 2, no traceback, nothing
  written.

Plain MONAI reads a DICOM series input as a NIfTI of the same volume (medxai's reading of it,
same array and affine), except where the config names ``PydicomReader``: then plain MONAI reads
the series itself and the two label maps are compared in RAS (MONAI may stack the slices the
other way round). The seeded network's last bias is shifted so that it labels part of the
input (an all-background label map would make the comparison empty); the test asserts it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from tests.helpers_dicom import crop_dicom_series

pytestmark = pytest.mark.shared_data

CT_SM = ("dicom", "totalsegmentator_tests", "tests", "reference_files", "example_ct_sm.nii.gz")
CT_DICOM = ("dicom", "totalsegmentator_tests", "tests", "reference_files", "example_ct_dicom")
ISIC = ("isic2018", "val", "images", "ISIC_0000006.jpg")
CXR = ("cxr_lungs", "val", "CHNCXR_0007_0.png")


# ---------------------------------------------------------------------------------------------
# inputs: kind -> (what medxai segments, what plain MONAI reads: the same pixels)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    from PIL import Image

    from medxai.io.readers import load_image

    work = tmp_path_factory.mktemp("variety_inputs")
    ct = work / "ct.nii.gz"  # 32x32x16 at 3 mm
    nib.save(nib.load(str(shared_path(*CT_SM))).slicer[40:72, 40:72, 8:24], str(ct))
    series = crop_dicom_series(shared_path(*CT_DICOM), work / "ct_series", slice(240, 272),
                               slice(210, 242), first=16)
    img = load_image(series).image
    series_nifti = work / "ct_series.nii.gz"
    nib.save(nib.Nifti1Image(img[0].numpy(), img.affine.numpy()), str(series_nifti))
    rgb, jpeg = work / "photo.png", work / "photo.jpg"
    Image.open(shared_path(*ISIC)).resize((72, 56)).save(rgb)
    Image.open(shared_path(*ISIC)).resize((72, 56)).save(jpeg, quality=90)
    grey = work / "cxr.png"
    Image.open(shared_path(*CXR)).resize((48, 64)).save(grey)
    ct_slice = next(p for p in sorted(series.iterdir()) if p.is_file())  # one CT DICOM file
    return {"ct": (ct, ct), "series": (series, series_nifti), "slice": (ct_slice, ct_slice), "rgb": (rgb, rgb),
            "jpeg": (jpeg, jpeg), "grey": (grey, grey)}


# ---------------------------------------------------------------------------------------------
# config pieces, as the tutorials write them
# ---------------------------------------------------------------------------------------------

def compose(*transforms: dict, **kw: Any) -> dict:
    return {"_target_": "Compose", "transforms": list(transforms), **kw}


def tr(target: str, keys: Any = "image", **kw: Any) -> dict:
    return {"_target_": target, "keys": keys, **kw}


INVERT = tr("Invertd", "pred", transform="@preprocessing", orig_keys="image",
            nearest_interp=False, to_tensor=True)
SOFTMAX_POST = compose(tr("Activationsd", "pred", softmax=True), INVERT,
                       tr("AsDiscreted", "pred", argmax=True))
SIGMOID_POST = compose(tr("Activationsd", "pred", sigmoid=True), INVERT,
                       tr("AsDiscreted", "pred", threshold=0.5))
CT_INTENSITY = tr("ScaleIntensityRanged", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True)


def unet(dims: int = 3, in_channels: int = 1, out_channels: int = 2, **kw: Any) -> dict:
    return {"_target_": "UNet", "spatial_dims": dims, "in_channels": in_channels,
            "out_channels": out_channels, "channels": [4, 8, 16], "strides": [2, 2],
            "num_res_units": 1, **kw}


def metadata(name: str, labels: dict[str, str] | None = None, modality: str = "CT",
             channels: int = 1) -> dict:
    out: dict = {"name": name, "version": "0.1.0"}
    image = {"type": "image", "format": "hounsfield" if modality == "CT" else "magnitude",
             "modality": modality, "num_channels": channels}
    pred: dict = {"type": "image", "format": "segmentation"}
    if labels is not None:
        pred["channel_def"] = labels
        pred["num_channels"] = len(labels)
    out["network_data_format"] = {"inputs": {"image": image}, "outputs": {"pred": pred}}
    return out


# ---------------------------------------------------------------------------------------------
# the bundle folder, seeded weights in the form asked
# ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One bundle: its config, how its weights are stored, its input, and what to expect
    (``refused``: words of medxai's one-line refusal; ``refused_at``: ``load`` or ``run``)."""

    name: str
    cfg: dict
    input: str = "ct"
    fmt: str = "json"
    weights: str = "state_dict"
    meta: dict | None = None
    scripts: dict[str, str] = field(default_factory=dict)
    refused: str | None = None
    refused_at: str = "load"
    labels: list[int] | None = None  # the label values describe must list
    plain_overrides: dict[str, Any] = field(default_factory=dict)
    plain_reads: str = "nifti"  # or "series": plain MONAI reads the DICOM folder itself
    key: str = "image"  # the data key the bundle reads the image under
    common: dict | None = None  # configs/common.yaml (the tutorials' split)
    no_metadata: bool = False  # no configs/metadata.json at all
    files: dict[str, dict] = field(default_factory=dict)  # more config files, by path
    slow: bool = False


def _write_config(path: Path, cfg: dict) -> None:
    import yaml

    text = json.dumps(cfg, indent=2) if path.suffix == ".json" else yaml.safe_dump(cfg)
    path.write_text(text)


def _net_key(raw: dict) -> str:
    return "network_def" if "network_def" in raw else "network"


class _ScriptsOnPath:
    """The bundle folder first on ``sys.path`` and no stale ``scripts`` package (as
    ``monai.bundle run`` puts it), for plain MONAI."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def __enter__(self) -> None:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]
        sys.path.insert(0, self.root)

    def __exit__(self, *exc: object) -> None:
        sys.path.remove(self.root)
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]


def plain_parser(root: Path, case: Case):
    from monai.bundle import ConfigParser

    # as `monai.bundle run --config_file "['configs/common.yaml','configs/inference.yaml']"`
    files = sorted((root / "configs").glob("common.*")) + sorted(
        (root / "configs").glob("inference.*"))
    p = ConfigParser()
    p.read_config([str(f) for f in files])
    p["bundle_root"] = str(root)
    for key, value in case.plain_overrides.items():
        p[key] = value
    return p


def _last_conv(net: torch.nn.Module, out_channels: int) -> torch.nn.Module | None:
    convs = [m for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d,
                               torch.nn.ConvTranspose3d))
             and m.bias is not None and m.out_channels == out_channels]
    return convs[-1] if convs else None


def _balance(net: torch.nn.Module, parser, image: Path, key: str) -> None:
    """Shift the last convolution's bias so that each foreground channel wins on about a third
    of the model grid (softmax: against channel 0; sigmoid: above 0)."""
    from monai.data import list_data_collate

    pre, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    x = list_data_collate([pre({key: str(image)})])[key].as_tensor().float()
    sigmoid = "sigmoid" in json.dumps(parser.get("postprocessing"))
    with torch.no_grad():
        logits = inferer(x, net)
        conv = _last_conv(net, int(logits.shape[1]))
        if conv is None:
            return
        for k in range(0 if sigmoid else 1, logits.shape[1]):
            d = (logits[0, k] - (0 if sigmoid else logits[0, 0])).flatten()
            conv.bias[k] -= float(torch.quantile(d[:: max(1, d.numel() // 100000)], 0.67))


def build_bundle(tmp: Path, case: Case, calib: Path | None) -> Path:
    root = tmp / case.name
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    for rel, text in case.scripts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _write_config(root / "configs" / f"inference.{case.fmt}", case.cfg)
    for rel, content in case.files.items():
        _write_config(root / rel, content)
    if case.common is not None:
        _write_config(root / "configs" / "common.yaml", case.common)
    if not case.no_metadata:
        (root / "configs" / "metadata.json").write_text(
            json.dumps(case.meta or metadata(case.name), indent=2))
    if case.weights == "none":
        return root
    from monai.bundle import ConfigParser

    with _ScriptsOnPath(root), contextlib.chdir(root):
        p = plain_parser(root, case)
        torch.manual_seed(0)
        try:
            # a TorchScript-only bundle has no network_def: its model.ts is a small UNet
            net = (ConfigParser({"net": unet()}).get_parsed_content("net")
                   if case.weights == "ts" else p.get_parsed_content(_net_key(p.get())))
        except Exception:  # a network this MONAI cannot build: medxai refuses it
            torch.save({}, root / "models" / "model.pt")
            return root
        net.eval()
        if calib is not None:
            _balance(net, p, calib, case.key)
    sd = net.state_dict()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    forms: dict[str, Callable[[], None]] = {
        "state_dict": lambda: torch.save(sd, root / "models" / "model.pt"),
        # CheckpointSaver(save_dict={"model": @network, "optimizer": @optimizer}) and the like
        "ckpt_model": lambda: torch.save({"model": sd, "optimizer": opt.state_dict(),
                                          "epoch": 7}, root / "models" / "model.pt"),
        "ckpt_state_dict": lambda: torch.save({"state_dict": sd, "epoch": 7},
                                              root / "models" / "model.pt"),
        "ckpt_net": lambda: torch.save({"net": sd, "opt": opt.state_dict()},
                                       root / "models" / "model.pt"),
        # torch.save(DataParallel(net).state_dict()): every key starts with "module."
        "dataparallel": lambda: torch.save({f"module.{k}": v for k, v in sd.items()},
                                           root / "models" / "model.pt"),
        # torch.save(torch.compile(DataParallel(net)).state_dict())
        "compiled": lambda: torch.save({f"_orig_mod.module.{k}": v for k, v in sd.items()},
                                       root / "models" / "model.pt"),
        "pickled": lambda: torch.save(net, root / "models" / "model.pt"),
        "ts": lambda: torch.jit.script(net).save(str(root / "models" / "model.ts")),
    }
    forms[case.weights]()
    return root


def _plain_network(root: Path, case: Case, p) -> torch.nn.Module:
    if case.weights == "ts":
        return torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu").eval()
    net = p.get_parsed_content(_net_key(p.get()))
    ckpt = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    # what CheckpointLoader(load_dict={KEY: @network}) loads: ckpt[KEY], or the whole file
    key = {"ckpt_model": "model", "ckpt_state_dict": "state_dict", "ckpt_net": "net"}
    state = ckpt[key[case.weights]] if case.weights in key else ckpt
    if case.weights in ("dataparallel", "compiled"):  # as a user unwraps it by hand
        state = {k.removeprefix("_orig_mod.").removeprefix("module."): v
                 for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _without_saving(compose):
    """The postprocessing without its SaveImaged steps (inside grouped Composes too)."""
    from monai.transforms import Compose

    return Compose([_without_saving(t) if isinstance(t, Compose) else t
                    for t in compose.transforms if type(t).__name__ != "SaveImaged"])


def plain_monai(root: Path, case: Case, image: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(label map, affine or None) of the bundle run by plain MONAI on ``image``."""
    from monai.data import decollate_batch, list_data_collate

    # from the bundle folder, as the tutorials run `python -m monai.bundle run`
    with _ScriptsOnPath(root), contextlib.chdir(root):
        p = plain_parser(root, case)
        net = _plain_network(root, case, p)
        pre, inferer = p.get_parsed_content("preprocessing"), p.get_parsed_content("inferer")
        post = p.get_parsed_content("postprocessing")
        post = _without_saving(post)
        batch = list_data_collate([pre({case.key: str(image)})])
        with torch.no_grad():
            batch["pred"] = inferer(batch[case.key], net)
        out = post(decollate_batch(batch, detach=True)[0])["pred"]
    affine = getattr(out, "affine", None)
    return np.asarray(out)[0], (None if affine is None else np.asarray(affine))


# ---------------------------------------------------------------------------------------------
# medxai, through its CLI
# ---------------------------------------------------------------------------------------------

def run_cli(*args: str) -> tuple[int, str, BaseException | None]:
    from click.testing import CliRunner

    from medxai.cli.main import cli

    res = CliRunner().invoke(cli, list(args))
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return res.exit_code, res.output, exc


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def assert_one_line_refusal(code: int, out: str, exc: BaseException | None, words: str) -> None:
    assert exc is None, (out, exc)
    assert code == 2, (code, out)
    assert "Traceback" not in out, out
    lines = out.strip().splitlines()
    # no warnings (MONAI's own included) around it; progress lines before a run-time refusal
    assert not any(".py:" in line or "Warning" in line for line in lines), out
    first = next(i for i, line in enumerate(lines) if line.startswith("Error"))
    text = "\n".join(lines[first:])
    assert len(lines) - first <= 2, text  # the message, and its hint
    assert words.lower() in lines[first].lower(), (words, text)


def check_case(case: Case, inputs: dict, tmp_path: Path) -> None:
    medxai_input, plain_input = inputs[case.input]
    root = build_bundle(tmp_path, case, calib=plain_input if case.refused is None else None)
    before = _files(root)
    dest = tmp_path / "out"
    code, out, exc = run_cli("models", "describe", str(root))
    if case.refused and case.refused_at == "load":
        assert_one_line_refusal(code, out, exc, case.refused)
    else:
        assert code == 0 and exc is None, (out, exc)
        assert case.name in out, out
        if case.weights != "ts":  # TorchScript: chosen at segment time (docs/bundles.md)
            assert "saliency default:" in out, out
    code, seg_out, exc = run_cli("segment", str(medxai_input), "--model", str(root), "-o",
                                 str(dest), "--explain", "none", "--device", "cpu")
    assert _files(root) == before, "medxai wrote into the bundle's folder"
    assert not (tmp_path / "user_out").exists(), "medxai ran the bundle's SaveImaged"
    if case.refused:
        assert_one_line_refusal(code, seg_out, exc, case.refused)
        assert not dest.exists() or not _files(dest), _files(dest)
        return
    assert code == 0 and exc is None, (seg_out, exc)
    (labels_file,) = dest.rglob("labels.nii.gz")
    ours_img = nib.load(str(labels_file))
    ours = np.asarray(ours_img.dataobj)
    if case.plain_reads == "series":
        ref, ref_affine = plain_monai(root, case, medxai_input)
        assert ref_affine is not None
        ours = np.asarray(nib.as_closest_canonical(ours_img).dataobj)
        ref_img = nib.as_closest_canonical(nib.Nifti1Image(ref.astype(np.float32), ref_affine))
        np.testing.assert_allclose(ref_img.affine, nib.as_closest_canonical(ours_img).affine,
                                   atol=1e-4)
        ref = np.asarray(ref_img.dataobj)
    else:
        ref, _ = plain_monai(root, case, plain_input)
    ref = np.rint(ref)  # Invertd(nearest_interp=False) of a discrete map: fractional borders
    if ours.shape != ref.shape and ours.squeeze().shape == ref.squeeze().shape:
        ours, ref = ours.squeeze(), ref.squeeze()  # a 2D map written as (I, J, 1)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert len(np.unique(ref)) > 1, "the seeded network should label part of the input"
    np.testing.assert_array_equal(ours, ref.astype(ours.dtype))
    if case.labels is not None:
        assert _described_labels(root) == case.labels
        names = (case.meta or {}).get("network_data_format", {}).get("outputs", {}).get(
            "pred", {}).get("channel_def")
        if names and case.labels == list(range(len(names))):  # argmax: channel k is value k
            assert _described_names(root) == [names[str(v)] for v in case.labels]
        # every value in the label map is a named label of the report (and of the SEG)
        report = json.loads(next(dest.rglob("report.json")).read_text())
        reported = {int(lab["value"]) for lab in report["labels"]
                    if lab.get("voxel_count") or lab.get("volume_mm3")}
        assert reported == set(np.unique(ours).astype(int).tolist()) - {0}, report["labels"]


def _described_labels(root: Path) -> list[int]:
    from medxai.models.registry import load_model

    return [lab.value for lab in load_model(root).contract.labels]


def _described_names(root: Path) -> list[str]:
    from medxai.models.registry import load_model

    return [lab.name for lab in load_model(root).contract.labels]


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------

def _spleen_style() -> dict:
    """The zoo's spleen_ct_segmentation style, JSON, with everything a training run needs and
    inference never builds: paths that do not exist here, a datalist glob, a dataset, an
    evaluator with its handlers (ignite is not installed), initialize/run."""
    return {
        "imports": ["$import glob", "$import os", "$import torch"],
        "bundle_root": "/workspace/data/spleen_ct_segmentation",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "ckpt_dir": "$@bundle_root + '/models'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "patch_size": [16, 16, 16],
        "network_def": unet(norm="batch"),
        "network": "$@network_def.to(@device)",
        "preprocessing": compose(
            tr("LoadImaged"),
            tr("EnsureChannelFirstd"),
            tr("Orientationd", axcodes="RAS"),
            tr("Spacingd", pixdim=[4.0, 4.0, 4.0], mode="bilinear"),
            CT_INTENSITY,
            tr("EnsureTyped"),
        ),
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size",
                    "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": compose(
            tr("Activationsd", "pred", softmax=True),
            tr("Invertd", "pred", transform="@preprocessing", orig_keys="image",
               meta_keys="pred_meta_dict", orig_meta_keys="image_meta_dict",
               meta_key_postfix="meta_dict", nearest_interp=False, to_tensor=True),
            tr("AsDiscreted", "pred", argmax=True),
            tr("SaveImaged", "pred", output_dir="@output_dir", output_postfix="seg",
               resample=False, separate_folder=False),
        ),
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/model.pt'",
             "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                      "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def _yaml_basicunet() -> dict:
    return {
        "imports": ["$import torch", "$from pathlib import Path"],
        "bundle_root": ".",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]},
        "preprocessing": compose(
            tr("LoadImaged", ensure_channel_first=True, image_only=True),
            tr("CropForegroundd", source_key="image", select_fn="$lambda x: x > -500",
               margin=1, allow_smaller=True),
            tr("NormalizeIntensityd", nonzero=True, channel_wise=True),
            tr("DivisiblePadd", k=16),
        ),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": compose(
            tr("Activationsd", "pred", softmax=True), INVERT,
            tr("AsDiscreted", "pred", argmax=True),
            tr("KeepLargestConnectedComponentd", "pred", applied_labels=[1]),
            tr("FillHolesd", "pred", applied_labels=[1]),
            tr("SaveImaged", "pred", output_postfix="seg"),  # into "./" (the working folder)
        ),
        "validate": {"evaluator": "@missing_evaluator", "handlers": "@missing_handlers"},
        "train": {"trainer": {"_target_": "SupervisedTrainer", "max_epochs": "@epochs"}},
    }


def _attention_sigmoid() -> dict:
    return {
        "imports": ["$import numpy as np"],
        "network_def": {"_target_": "AttentionUnet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 1, "channels": [4, 8, 16], "strides": [2, 2]},
        "preprocessing": compose(
            tr("LoadImaged", reader="NibabelReader", image_only=False, simple_keys=True,
               dtype="$np.float32"),
            tr("EnsureChannelFirstd", channel_dim="no_channel"),
            CT_INTENSITY,
            tr("Resized", spatial_size=[24, 24, 16], mode="trilinear"),
        ),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SIGMOID_POST,
    }


def _segresnet_refs() -> dict:
    return {
        "imports": ["$import torch"],
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 3,
        "patch_size": [16, 16, 16],
        "network_def": {"_target_": "SegResNet", "spatial_dims": "@spatial_dims",
                        "in_channels": "@in_channels", "out_channels": "@num_classes",
                        "init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
        "preprocessing": compose(
            tr("LoadImaged", reader="ITKReader", image_only=False),
            tr("EnsureChannelFirstd"),
            tr("Orientationd", axcodes="RAS"),
            tr("Spacingd", pixdim=[4.0, 4.0, 4.0], mode="bilinear"),
            CT_INTENSITY,
            tr("CopyItemsd", times=1, names=["image_raw"]),
            tr("Lambdad", func="$lambda x: x * 2.0 - 1.0"),
            tr("CastToTyped", dtype="$torch.float32"),
            tr("EnsureTyped", track_meta=True),
        ),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size",
                    "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"},
        "postprocessing": compose(
            tr("Activationsd", "pred", softmax=True), INVERT,
            tr("AsDiscreted", "pred", argmax=True),
            tr("Lambdad", "pred", func="$lambda x: x.float()"),
        ),
    }


def _dynunet_ckpt_key() -> dict:
    return {
        "network_def": {"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, 2],
                        "upsample_kernel_size": [2, 2], "filters": [4, 8, 16],
                        "norm_name": "instance", "deep_supervision": False},
        "network": "$@network_def",
        "preprocessing": compose(
            tr("LoadImaged"), tr("EnsureChannelFirstd"), CT_INTENSITY,
            tr("SpatialPadd", spatial_size=[32, 32, 32], mode="constant"),
        ),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"net": "@network"}, "strict": True}],
    }


def _unetr(**extra: Any) -> dict:
    return {
        "network_def": {"_target_": "UNETR", "in_channels": 1, "out_channels": 2,
                        "img_size": [32, 32, 16], "feature_size": 4, "hidden_size": 24,
                        "mlp_dim": 48, "num_heads": 2, "norm_name": "instance", **extra},
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"),
                                 tr("Orientationd", axcodes="RAS"), CT_INTENSITY),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16],
                    "sw_batch_size": 1, "overlap": 0.0},
        "postprocessing": SOFTMAX_POST,
    }


def _swinunetr(**extra: Any) -> dict:
    return {
        "network_def": {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2,
                        "feature_size": 12, "depths": [1, 1, 1, 1], "use_checkpoint": False,
                        **extra},
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"), CT_INTENSITY),
        # 64^3: its bottleneck (1/32) then has more than one voxel for the instance norm
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 64],
                    "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": SOFTMAX_POST,
    }


def _flexible_unet(pretrained: bool) -> dict:
    # the pretrained one leaves spatial_dims at FlexibleUNet's default (2): medxai reads the
    # dimensions from the network's first convolution
    dims = {} if pretrained else {"spatial_dims": 2}
    return {
        "network_def": {"_target_": "FlexibleUNet", "in_channels": 3, "out_channels": 2,
                        "backbone": "efficientnet-b0", "pretrained": pretrained,
                        "decoder_channels": [16, 16, 8, 8, 4], "is_pad": False, **dims},
        "preprocessing": compose(
            tr("LoadImaged", reader="PILReader", image_only=True),
            tr("EnsureChannelFirstd", channel_dim=-1),
            tr("ScaleIntensityd"),
            tr("Resized", spatial_size=[64, 64], mode="bilinear"),
        ),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }


TINY_NET = '''
import torch


class TinyNet(torch.nn.Module):
    """A two-layer 2D network of the bundle's own."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 4):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(width, out_channels, 1)

    def forward(self, x):
        return self.head(self.body(x))


class NamedOutputs(TinyNet):
    """Several named maps (as HoVerNet gives them)."""

    def forward(self, x):
        out = self.head(self.body(x))
        return {"nucleus_prediction": out, "horizontal_vertical": out}
'''

MY_TRANSFORMS = '''
from monai.transforms import MapTransform


class Gamma(MapTransform):
    """An intensity step of the bundle's own (not invertible, as most are)."""

    def __init__(self, keys, gamma: float = 0.8):
        super().__init__(keys)
        self.gamma = gamma

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key].clamp(min=0) ** self.gamma
        return d
'''


def _scripts_grey() -> dict:
    return {
        "imports": ["$import scripts", "$import scripts.my_transforms"],
        "network_def": {"_target_": "scripts.net.TinyNet", "in_channels": 1, "out_channels": 1},
        "preprocessing": compose(
            tr("LoadImaged", reader="PILReader", ensure_channel_first=True, image_only=True),
            tr("ScaleIntensityd"),
            tr("scripts.my_transforms.Gamma", gamma=0.8),
            tr("Resized", spatial_size=[32, 32]),
        ),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SIGMOID_POST,
    }


def _jpeg_auto_reader() -> dict:
    return {
        "network_def": unet(dims=2, in_channels=3, out_channels=1),
        "preprocessing": compose(
            tr("LoadImaged"), tr("EnsureChannelFirstd"),
            tr("NormalizeIntensityd", channel_wise=True),
            tr("Resized", spatial_size=[48, 48], mode="area"),
        ),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SIGMOID_POST,
    }


def _slices() -> dict:
    return {
        "network_def": unet(dims=2),
        "preprocessing": compose(
            tr("LoadImaged", reader="NibabelReader"),
            tr("EnsureChannelFirstd", channel_dim="no_channel"),
            tr("Orientationd", axcodes="RAS"), CT_INTENSITY),
        "inferer": {"_target_": "SliceInferer", "spatial_dim": 2, "roi_size": [16, 16],
                    "sw_batch_size": 4, "overlap": 0.25, "progress": False},
        "postprocessing": SOFTMAX_POST,
    }


def _network_only() -> dict:
    return {
        "device": "$torch.device('cpu')",
        "imports": ["$import torch"],
        "network": unet(),
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"), CT_INTENSITY),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }


def _pydicom_reader() -> dict:
    return {
        "network_def": unet(),
        "preprocessing": compose(
            tr("LoadImaged", reader="monai.data.PydicomReader"), tr("EnsureChannelFirstd"),
            tr("Orientationd", axcodes="RAS"),
            tr("Spacingd", pixdim=[1.0, 1.0, 2.5], mode="bilinear"), CT_INTENSITY),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16],
                    "sw_batch_size": 1},
        "postprocessing": SOFTMAX_POST,
    }


def _lazy() -> dict:
    return {
        "imports": ["$import torch"],
        "network_def": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3,
                        "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
                        "strides": [2, 2], "_desc_": "a small UNet"},
        "preprocessing": compose(
            tr("LoadImaged"), tr("EnsureChannelFirstd"),
            tr("RandFlipd", prob=1.0, spatial_axis=0, _disabled_=True),
            tr("Orientationd", axcodes="LPS"),
            tr("Spacingd", pixdim=[2.5, 2.5, 4.0], mode="bilinear"),
            tr("Resized", spatial_size=[24, 24, 12]),
            CT_INTENSITY, lazy=True,
        ),
        "inferer": {"_target_": "SimpleInferer", "_requires_": "$torch.manual_seed(0)"},
        "postprocessing": SOFTMAX_POST,
    }


def _loader_dtype_none() -> dict:
    return {
        "network_def": unet(),
        "preprocessing": compose(
            tr("LoadImaged", ["image"], dtype=None, image_only=False),
            tr("EnsureChannelFirstd", ["image"]),
            tr("ScaleIntensityd", ["image"], minv=0.0, maxv=1.0),
            tr("EnsureTyped", ["image"], dtype="$torch.float32"),
        ),
        "imports": ["$import torch"],
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }


def _torchscript_yaml() -> dict:
    cfg = {
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"), CT_INTENSITY),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16],
                    "sw_batch_size": 2},
        "postprocessing": SOFTMAX_POST,
    }
    return cfg


def _multilabel_sigmoid() -> dict:
    return {
        "network_def": unet(out_channels=3),
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"), CT_INTENSITY),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SIGMOID_POST,
    }


def _pil_converter() -> dict:
    cfg = _scripts_grey()
    cfg.pop("imports")
    cfg["network_def"] = unet(dims=2, in_channels=1, out_channels=1)
    cfg["preprocessing"] = compose(
        tr("LoadImaged", reader="PILReader", converter="$lambda image: image.convert('L')"),
        tr("EnsureChannelFirstd", channel_dim="no_channel"), tr("ScaleIntensityd"),
        tr("Resized", spatial_size=[32, 32]))
    return cfg


def _common_split() -> tuple[dict, dict]:
    """(configs/common.yaml, configs/inference.yaml): the network and shared settings in the
    first, the inference chain in the second (the MONAI tutorials' split)."""
    common = {
        "imports": ["$import torch", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "patch_size": [16, 16, 16],
        "network_def": unet(),
        "network": "$@network_def.to(@device)",
    }
    inference = {
        "dataset_dir": "/data/Task09_Spleen",
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"),
                                 tr("Orientationd", axcodes="RAS"), CT_INTENSITY,
                                 tr("EnsureTyped", device="@device")),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size",
                    "sw_batch_size": 2, "overlap": 0.5},
        "postprocessing": SOFTMAX_POST,
    }
    return common, inference


def _image_and_label_keys() -> dict:
    """Training transforms reused for inference: keys image and label, the label allowed to be
    missing."""
    keys = ["image", "label"]
    return {
        "network_def": unet(),
        "preprocessing": compose(
            tr("LoadImaged", keys, allow_missing_keys=True, image_only=True),
            tr("EnsureChannelFirstd", keys, allow_missing_keys=True),
            tr("Orientationd", keys, axcodes="RAS", allow_missing_keys=True),
            tr("Spacingd", keys, pixdim=[4.0, 4.0, 4.0], mode=["bilinear", "nearest"],
               allow_missing_keys=True),
            CT_INTENSITY,
            tr("EnsureTyped", keys, allow_missing_keys=True),
        ),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16],
                    "sw_batch_size": 4},
        "postprocessing": SOFTMAX_POST,
    }


def _transforms_by_expression() -> dict:
    """The chain assembled from lists by expressions (``$@a + @b``), as several zoo configs
    write it."""
    return {
        "network_def": {"_target_": "SegResNetDS", "spatial_dims": 3, "init_filters": 8,
                        "in_channels": 1, "out_channels": 2, "blocks_down": [1, 1, 1]},
        "preprocessing_transforms": [tr("LoadImaged"), tr("EnsureChannelFirstd")],
        "deterministic_transforms": [CT_INTENSITY, tr("EnsureTyped")],
        "preprocessing": {"_target_": "Compose",
                          "transforms": "$@preprocessing_transforms + @deterministic_transforms"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16],
                    "sw_batch_size": 2, "mode": "gaussian"},
        "postprocessing_transforms": [tr("Activationsd", "pred", softmax=True), INVERT,
                                      tr("AsDiscreted", "pred", argmax=True)],
        "postprocessing": {"_target_": "Compose", "transforms": "$@postprocessing_transforms"},
    }


def _other_key() -> dict:
    """The image under the key ``img``, not ``image``."""
    return {
        "network_def": unet(),
        "preprocessing": compose(tr("LoadImaged", "img"), tr("EnsureChannelFirstd", "img"),
                                 tr("Spacingd", "img", pixdim=[4.0, 4.0, 4.0]),
                                 tr("ScaleIntensityRanged", "img", a_min=-57, a_max=164,
                                    b_min=0.0, b_max=1.0, clip=True)),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": compose(
            tr("Activationsd", "pred", softmax=True),
            tr("Invertd", "pred", transform="@preprocessing", orig_keys="img",
               nearest_interp=False, to_tensor=True),
            tr("AsDiscreted", "pred", argmax=True)),
    }


def _without_invertd() -> dict:
    """Resampled for the network, never brought back: the label map is on the model grid."""
    cfg = _other_key()
    cfg["postprocessing"] = compose(tr("Activationsd", "pred", softmax=True),
                                    tr("AsDiscreted", "pred", argmax=True))
    return cfg


def _unet_dimensions() -> dict:
    cfg = _network_only()
    net = unet()
    net["dimensions"] = net.pop("spatial_dims")  # MONAI < 0.8's name
    return {k: v for k, v in cfg.items() if k != "network"} | {"network_def": net}


def _network_by_expression() -> dict:
    """``network_def`` written as an expression, not a ``_target_`` (dimensions and channels
    then come from the network itself)."""
    return {
        "imports": ["$import monai"],
        "network_def": "$monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, "
                       "out_channels=2, features=(4, 4, 8, 8, 16, 4))",
        "network": "$torch.nn.DataParallel(@network_def)",
        "preprocessing": compose(tr("LoadImaged", reader="PILReader", image_only=True),
                                 tr("EnsureChannelFirstd", channel_dim="no_channel"),
                                 tr("ScaleIntensityd"), tr("Resized", spatial_size=[32, 32])),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }


def _mapped_label_values() -> dict:
    """Channel indices mapped to the dataset's label values by ``MapLabelValued``."""
    cfg = _network_only() | {"network": unet(out_channels=3)}
    cfg["postprocessing"] = compose(
        tr("Activationsd", "pred", softmax=True), INVERT, tr("AsDiscreted", "pred", argmax=True),
        tr("MapLabelValued", "pred", orig_labels=[0, 1, 2], target_labels=[0, 5, 7]))
    return cfg


def _grey_into_rgb_network() -> dict:
    """A grey X-ray into a 3-channel network: the preprocessing repeats the channel."""
    return {
        "network_def": unet(dims=2, in_channels=3),
        "preprocessing": compose(tr("LoadImaged", reader="PILReader", image_only=True),
                                 tr("EnsureChannelFirstd", channel_dim="no_channel"),
                                 tr("RepeatChanneld", repeats=3), tr("ScaleIntensityd"),
                                 tr("Resized", spatial_size=[32, 32])),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }


def _rgb_into_grey_network() -> dict:
    """An RGB photo into a 1-channel network: the preprocessing averages the colours."""
    cfg = _grey_into_rgb_network()
    cfg["network_def"] = unet(dims=2, in_channels=1)
    cfg["preprocessing"] = compose(
        tr("LoadImaged", reader="PILReader", image_only=True),
        tr("EnsureChannelFirstd", channel_dim=-1),
        tr("Lambdad", func="$lambda x: x.mean(0, keepdim=True)"), tr("ScaleIntensityd"),
        tr("Resized", spatial_size=[32, 32]))
    return cfg


def _nested_save() -> dict:
    """Saving steps grouped in a Compose inside the postprocessing, to a folder of the user's."""
    cfg = _network_only()
    cfg["output_dir"] = "$@bundle_root + '/../user_out'"
    cfg["postprocessing"] = compose(
        tr("Activationsd", "pred", softmax=True), INVERT, tr("AsDiscreted", "pred", argmax=True),
        compose(tr("SaveImaged", "pred", output_dir="@output_dir", output_postfix="seg"),
                tr("SaveImaged", "pred", output_dir="@output_dir", output_postfix="copy")))
    return cfg


def _one_dicom_slice() -> dict:
    """A 2D network on one CT DICOM file, read by MONAI's PydicomReader in plain MONAI."""
    return {
        "network_def": unet(dims=2),
        "preprocessing": compose(tr("LoadImaged", reader="PydicomReader", image_only=True),
                                 tr("EnsureChannelFirstd", channel_dim="no_channel"),
                                 CT_INTENSITY),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }


def _macros() -> tuple[dict, dict]:
    """(inference.json, configs/parts.json): the network and the reading steps copied from
    another file by macros (``%configs/parts.json#...``), a relative id (``@##``) too."""
    parts = {"network_def": unet(), "load": [tr("LoadImaged", reader="NibabelReader"),
                                             tr("EnsureChannelFirstd")]}
    cfg = {
        "network_def": "%configs/parts.json#network_def",
        "intensity": {"a_min": -57, "b": {"a_max": 164, "a_min": "@##a_min"}},
        "load_transforms": "%configs/parts.json#load",
        "preprocessing": {"_target_": "Compose", "transforms": "$@load_transforms + "
                          "[monai.transforms.ScaleIntensityRanged('image', @intensity#b#a_min, "
                          "@intensity#b#a_max, 0.0, 1.0, clip=True)]"},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": SOFTMAX_POST,
    }
    return cfg, parts


def _classification() -> dict:
    """A MedNIST-style classification bundle: class scores, no map."""
    return {
        "network_def": {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1,
                        "out_channels": 6},
        "preprocessing": compose(tr("LoadImaged", image_only=True), tr("EnsureChannelFirstd"),
                                 tr("ScaleIntensityd"), tr("Resized", spatial_size=[32, 32])),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": compose(tr("Activationsd", "pred", softmax=True),
                                  tr("AsDiscreted", "pred", argmax=True)),
    }


SPLEEN_LABELS = {"0": "background", "1": "spleen"}
CASES = [
    Case("spleen_style_json", _spleen_style(), input="series", weights="ckpt_model",
         meta=metadata("spleen_style", SPLEEN_LABELS), labels=[0, 1]),
    Case("tutorial_yaml_basicunet", _yaml_basicunet(), fmt="yaml", weights="ckpt_state_dict"),
    Case("attention_unet_one_sigmoid_channel", _attention_sigmoid(), labels=[0, 1]),
    # ITKReader (itk is not installed here): plain MONAI reads the same NIfTI with nibabel
    Case("segresnet_references", _segresnet_refs(), input="series",
         plain_overrides={"preprocessing#transforms#0#reader": "NibabelReader"},
         meta=metadata("segresnet", {"0": "background", "1": "liver", "2": "spleen"}),
         labels=[0, 1, 2]),
    Case("dynunet_checkpoint_key", _dynunet_ckpt_key(), weights="ckpt_net"),
    Case("unetr", _unetr()),
    Case("unetr_monai_1_3_pos_embed", _unetr(pos_embed="perceptron"),
         refused="network_def UNETR cannot be built with MONAI"),
    Case("swinunetr", _swinunetr()),
    Case("swinunetr_monai_1_3_img_size", _swinunetr(img_size=[32, 32, 32]),
         refused="SwinUNETR cannot be built with MONAI"),
    Case("flexible_unet_rgb_png", _flexible_unet(pretrained=False), input="rgb"),
    Case("flexible_unet_pretrained_never_downloads", _flexible_unet(pretrained=True),
         input="rgb", plain_overrides={"network_def#pretrained": False}),
    Case("scripts_network_grey_png", _scripts_grey(), input="grey",
         scripts={"scripts/__init__.py": "", "scripts/net.py": TINY_NET,
                  "scripts/my_transforms.py": MY_TRANSFORMS}),
    Case("rgb_jpeg_default_reader", _jpeg_auto_reader(), input="jpeg",
         meta=metadata("lesion", {"0": "lesion"}, modality="XC", channels=3), labels=[0, 1]),
    Case("slice_inferer_dicom_series", _slices(), input="series"),
    Case("network_without_network_def", _network_only()),
    Case("pydicom_reader_dicom_series", _pydicom_reader(), input="series",
         plain_reads="series"),
    Case("lazy_compose_disabled_requires", _lazy(), fmt="yaml"),
    Case("loader_dtype_none", _loader_dtype_none()),
    Case("torchscript_only_yaml", _torchscript_yaml(), fmt="yaml", weights="ts"),
    Case("common_yaml_split", _common_split()[1], fmt="yaml", common=_common_split()[0]),
    Case("image_and_label_keys", _image_and_label_keys(), input="series"),
    Case("transforms_by_expression_segresnetds", _transforms_by_expression()),
    Case("image_under_another_key", _other_key(), key="img"),
    Case("unet_monai_0_7_dimensions", _unet_dimensions(),
         refused="network_def UNet cannot be built with MONAI 1.6.1: it has no argument "
                 "'dimensions'"),
    Case("no_invertd_after_spacing", _without_invertd(), refused="gives a label map of",
         refused_at="run"),
    Case("argmax_channel_def_without_background", _network_only() | {"network": unet(out_channels=3)},
         meta=metadata("organs", {"0": "other", "1": "liver", "2": "spleen"}),
         labels=[0, 1, 2]),
    Case("no_metadata_json", _network_only(), no_metadata=True),
    Case("network_by_expression_dataparallel_weights", _network_by_expression(), input="grey",
         weights="dataparallel"),
    Case("mapped_label_values", _mapped_label_values(),
         meta=metadata("mapped", {"0": "background", "1": "liver", "2": "spleen"}),
         labels=[0, 5, 7]),
    Case("grey_picture_repeated_into_3_channels", _grey_into_rgb_network(), input="grey"),
    Case("rgb_photo_averaged_into_1_channel", _rgb_into_grey_network(), input="jpeg"),
    Case("grey_picture_into_3_channels_refused", _grey_into_rgb_network() | {
        "preprocessing": compose(tr("LoadImaged"), tr("EnsureChannelFirstd"),
                                 tr("Resized", spatial_size=[32, 32]))},
         input="grey", refused="expects 3 input channel(s), this input has 1", refused_at="run"),
    Case("save_steps_in_a_nested_compose", _nested_save()),
    Case("one_ct_dicom_file_2d", _one_dicom_slice(), input="slice", weights="compiled"),
    Case("network_with_named_outputs", _scripts_grey() | {
        "network_def": {"_target_": "scripts.net.NamedOutputs", "in_channels": 1}},
         input="grey", scripts={"scripts/__init__.py": "", "scripts/net.py": TINY_NET,
                                "scripts/my_transforms.py": MY_TRANSFORMS},
         refused="gives a dict, not one tensor of maps", refused_at="run"),
    # a DICOM series: medxai's reader must replace the NibabelReader the macro brings in
    Case("macros_from_another_file", _macros()[0], files={"configs/parts.json": _macros()[1]},
         input="series"),
    Case("classification_bundle", _classification(), input="grey",
         refused="not a segmentation bundle medxai can run", refused_at="run"),
    Case("pickled_whole_model", _network_only() | {"network_def": unet()}, weights="pickled",
         refused="not a plain state dict"),
    Case("missing_weights", _spleen_style(), weights="none", refused="bundle has no weights"),
    Case("sigmoid_channels_not_folded", _multilabel_sigmoid(), refused="not a label map",
         refused_at="run"),
    Case("pil_converter", _pil_converter(), input="rgb", refused="converter"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name,
                                               marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bundle_variety(case: Case, inputs: dict, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    _never_download(monkeypatch)
    cwd = tmp_path / "cwd"  # SaveImaged's default output_dir is "./"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    check_case(case, inputs, tmp_path)
    assert not _files(cwd), _files(cwd)


def _never_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch pretrained weights fails the test."""
    import torch.hub
    import torch.utils.model_zoo

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_batch_input_check_lets_the_bundle_make_its_channels(inputs: dict, tmp_path: Path) -> None:
    """`medxai batch` asks `check_input_fits` before it predicts: for a MONAI bundle that is the
    bundle's own check, so a grey image for a network whose preprocessing repeats the channel
    fits (as in `medxai segment`), and a 2-channel image still does not."""
    from medxai.errors import ModelMismatchError
    from medxai.inference import check_input_fits
    from medxai.io.readers import load_image
    from medxai.models.registry import load_model

    case = next(c for c in CASES if c.name == "grey_picture_repeated_into_3_channels")
    bundle = load_model(build_bundle(tmp_path, case, None))
    grey = load_image(inputs["grey"][0]).image
    assert grey.shape[0] == 1 and bundle.in_channels == 3
    check_input_fits(bundle, grey, "grey.png")
    with pytest.raises(ModelMismatchError, match="channel"):
        check_input_fits(bundle, torch.cat([grey, grey]), "two.png")
