"""MONAI model-zoo bundles: load a folder in MONAI bundle layout and run it as the bundle says.

Layout (as ``monai.bundle download`` writes it)::

    BUNDLE/
      configs/metadata.json            name, version, network_data_format (inputs, channel_def)
      configs/inference.json | .yaml   monai.bundle.ConfigParser syntax
      models/model.pt                  a state dict (loaded with ``weights_only=True``), or
      models/model.ts                  a TorchScript network

From the config medxai takes ``network_def``, ``preprocessing``, ``inferer`` and
``postprocessing`` (and ``amp``, from ``evaluator#amp`` or ``amp``). The preprocessing's
``LoadImaged`` is replaced by medxai's reader output (a channel-first ``MetaTensor`` with its RAS
affine: what ``LoadImaged`` + ``EnsureChannelFirstd`` give for the same NIfTI), and the
postprocessing's ``SaveImaged`` by medxai's writers. Everything between runs as the bundle says,
in the way ``SupervisedEvaluator`` runs it (collate, inferer, decollate, postprocessing), so the
label map equals plain MONAI's; the bundle's ``Invertd`` brings it onto the input grid.
Handlers, evaluators, datasets and dataloaders are never instantiated.

Labels come from ``metadata.json`` ``network_data_format.outputs.pred.channel_def`` when channel
0 is the background (softmax/argmax bundles). A bundle whose label values are not its channel
indices (e.g. BraTS: sigmoid channels TC/WT/ET become label values 1, 2, 4) names them in
``inference.json`` under the key ``medxai`` (plain MONAI ignores it)::

    "medxai": {"labels": [{"value": 1, "name": "tumor core"}, ...]}
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medxai.errors import ModelError, ModelMismatchError
from medxai.models.bundle import ModelBundle, sha256_file
from medxai.models.bundle_form import medxai_form_of
from medxai.models.contract import (
    DEFAULT_OVERLAP,
    InferenceSpec,
    InputSpec,
    LabelSpec,
    ModelContract,
    labels_from_names,
    saliency_spec_from_config,
)

__all__ = [
    "MonaiBundle",
    "is_monai_bundle",
    "load_monai_bundle",
    "CONFIG_NAMES",
    "OPTIONAL_PACKAGES",
]

#: Inference config file names, in the order they are looked for.
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: Transforms whose MONAI implementation needs an optional package: target class name ->
#: (import name, pip package name).
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "KeepLargestConnectedComponent": ("skimage", "scikit-image"),
    "KeepLargestConnectedComponentd": ("skimage", "scikit-image"),
    "RemoveSmallObjects": ("skimage", "scikit-image"),
    "RemoveSmallObjectsd": ("skimage", "scikit-image"),
    "LabelToContour": ("skimage", "scikit-image"),
    "LabelToContourd": ("skimage", "scikit-image"),
    "ITKReader": ("itk", "itk"),
}
_LOADERS = ("LoadImaged", "LoadImage")
_SAVERS = ("SaveImaged", "SaveImage")
#: What a bundle component may be, by the key it sits under.
_NEVER = ("handlers", "evaluator", "dataset", "dataloader", "trainer", "validate", "train")


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _config_file(root: Path) -> Path | None:
    for name in CONFIG_NAMES:
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    return None


def is_monai_bundle(path: str | Path) -> bool:
    """Whether the folder is a MONAI-form bundle (not medxai's own form).

    medxai's own bundles have a JSON ``configs/inference.json`` with a ``medxai`` block of form
    ``medxai-bundle/2`` (or, form 1, an ``input`` block and a plain ``preprocessing`` dict; see
    :mod:`medxai.models.bundle_form`); anything else with an inference config (YAML, a
    ``preprocessing`` with a ``_target_``, a ``models/model.ts``) is a MONAI bundle.
    """
    root = Path(path)
    cfg = _config_file(root)
    if cfg is None:
        return False
    if cfg.suffix != ".json":
        return True
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    return medxai_form_of(data) is None


def _targets(node: Any) -> list[str]:
    """Every ``_target_`` string inside a config node."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.append(node["_target_"])
        for v in node.values():
            found += _targets(v)
    elif isinstance(node, list):
        for v in node:
            found += _targets(v)
    return found


def _missing_module(exc: BaseException) -> str | None:
    """The name of a module whose absence caused ``exc`` (walking its causes), if any."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ModuleNotFoundError) and e.name:
            return e.name
        name = type(e).__name__
        if name == "OptionalImportError":
            m = re.search(r"import (?:of )?['\"]?([A-Za-z_][\w.]*)", str(e))
            if m:
                return m.group(1)
        e = e.__cause__ or e.__context__
    return None


_PIP_NAMES = {
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
}


def _package_hint(module: str) -> str:
    top = module.split(".")[0]
    return f"install the package: pip install {_PIP_NAMES.get(top, top)}"


def _instantiate(parser: Any, key: str, path: Path) -> Any:
    """``parser.get_parsed_content(key)`` with one clear :class:`ModelError` on failure."""
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except Exception as exc:  # MONAI wraps instantiation errors in several types
        missing = _missing_module(exc)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        located = re.search(r"Cannot locate class or function path: '([^']+)'", str(exc))
        if located:
            target = located.group(1)
            if missing and missing.split(".")[0] != target.split(".")[0]:
                raise ModelError(
                    f"{key!r} needs the package {missing!r}, which is not installed",
                    path=path,
                    hint=_package_hint(missing),
                ) from exc
            raise ModelError(
                f"{key!r}: _target_ {target!r} does not resolve to a class or "
                "function (not in MONAI, not importable)",
                path=path,
                hint="check the spelling, or install the package that provides it",
            ) from exc
        if missing:
            raise ModelError(
                f"{key!r} needs the package {missing!r}, which is not installed",
                path=path,
                hint=_package_hint(missing),
            ) from exc
        cause = exc.__cause__
        detail = f"{text}: {str(cause).splitlines()[0]}" if cause and str(cause) else text
        raise ModelError(
            f"cannot build {key!r} ({type(exc).__name__}: {detail})", path=path
        ) from exc


def _strip(compose: Any, names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Remove the transforms of class ``names`` from a MONAI ``Compose`` (in place);
    returns (removed, kept)."""
    transforms = list(getattr(compose, "transforms", []))
    removed = [t for t in transforms if type(t).__name__ in names]
    kept = [t for t in transforms if type(t).__name__ not in names]
    compose.transforms = kept
    return removed, kept


def _describe_transform(t: Any) -> str:
    """``ClassName(key=value, ...)`` for the settings of a MONAI transform worth showing."""
    name = type(t).__name__
    owners = [t] + [
        getattr(t, n)
        for n in (
            "spacing_transform",
            "ornt_transform",
            "scaler",
            "activations",
            "converter",
            "normalizer",
        )
        if hasattr(t, n)
    ]
    details = []
    for attr in (
        "pixdim",
        "axcodes",
        "a_min",
        "a_max",
        "b_min",
        "b_max",
        "minv",
        "maxv",
        "nonzero",
        "channel_wise",
        "softmax",
        "sigmoid",
        "argmax",
        "threshold",
        "applied_labels",
        "nearest_interp",
    ):
        for obj in owners:
            val = getattr(obj, attr, None)
            if val is not None and not callable(val) and not isinstance(val, torch.nn.Module):
                details.append(f"{attr}={_short(val)}")
                break
    return f"{name}({', '.join(details)})" if details else name


def _short(v: Any) -> str:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    s = repr(v)
    return s if len(s) < 40 else s[:37] + "..."


def _load_weights(network: torch.nn.Module, weights: Path) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        text = str(exc)
        if "weights_only" in text or "Unpickl" in type(exc).__name__ or "GLOBAL" in text:
            raise ModelError(
                "is not a plain state dict: loading it would unpickle Python objects, which "
                "medxai refuses (torch.load weights_only=True)",
                path=weights,
                hint="save the weights with torch.save(network.state_dict(), 'model.pt') "
                "(a pickled full model is not loaded)",
            ) from exc
        raise ModelError(
            f"cannot read the weights ({type(exc).__name__}: "
            f"{text.splitlines()[0] if text else ''})",
            path=weights,
        ) from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model", "network"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            "does not hold a state dict of tensors",
            path=weights,
            hint="save the weights with torch.save(network.state_dict(), 'model.pt')",
        )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next(
            (ln for ln in lines if ln.startswith(("size mismatch", "Missing", "Unexpected"))),
            lines[0] if lines else "",
        )
        more = len([ln for ln in lines[1:] if ln.startswith("size mismatch")]) - 1
        raise ModelError(
            f"weights do not fit the network_def in the config: {first}"
            + (f" (and {more} more)" if more > 0 else ""),
            path=weights,
            hint="the weights were trained for another network_def; use the bundle's own "
            "model.pt, or fix network_def",
        ) from exc


def _channel_def(metadata: dict[str, Any], io: str, key: str) -> dict[str, Any]:
    ndf = metadata.get("network_data_format", {}) or {}
    return (ndf.get(io, {}) or {}).get(key, {}) or {}


def _labels(
    config: dict[str, Any], metadata: dict[str, Any], out_channels: int | None, path: Path
) -> tuple[LabelSpec, ...]:
    given = config.get("medxai")
    extra: dict[str, Any] = given if isinstance(given, dict) else {}
    if extra.get("labels"):
        try:
            return tuple(
                LabelSpec(
                    int(lab["value"]),
                    str(lab["name"]),
                    tuple(lab["color"]) if lab.get("color") else None,
                )
                for lab in extra["labels"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"medxai.labels is malformed ({exc})",
                path=path,
                hint='a list of {"value": 1, "name": "spleen"} objects',
            ) from exc
    pred = _channel_def(metadata, "outputs", "pred")
    cdef = pred.get("channel_def") or {}
    try:
        names = {int(k): str(v) for k, v in cdef.items()}
    except (TypeError, ValueError):
        names = {}
    if names and "background" in names.get(0, "").lower():
        return labels_from_names(names)
    n = out_channels or int(pred.get("num_channels", 2) or 2)
    if names:
        # channels without a background channel (sigmoid outputs): value i + 1 per channel
        return labels_from_names({0: "background", **{k + 1: v for k, v in names.items()}})
    return labels_from_names({0: "background", **{k: f"label {k}" for k in range(1, n)}})


@dataclass
class MonaiBundle(ModelBundle):
    """A loaded MONAI model-zoo bundle (see the module docstring).

    Attributes (besides :class:`ModelBundle`'s):
        contract: the typed :class:`ModelContract`.
        monai_config: the raw inference config (``ConfigParser``'s view before parsing).
        pre: the bundle's ``preprocessing`` ``Compose`` without its ``LoadImaged``.
        inferer: the bundle's inferer.
        post: the bundle's ``postprocessing`` ``Compose`` without its ``SaveImaged``.
        image_key: the data key the bundle's transforms read the image from.
        scripted: the network is TorchScript (``models/model.ts``).
    """

    # always given by load_monai_bundle; None only as the dataclass default (fields after
    # ModelBundle's defaulted ones need one), shadowing the base class's computed property
    contract: ModelContract | None = None  # type: ignore[assignment]
    monai_config: dict[str, Any] = field(default_factory=dict)
    pre: Any = None
    inferer: Any = None
    post: Any = None
    image_key: str = "image"
    scripted: bool = False

    @property
    def spatial_dims(self) -> int:
        assert self.contract is not None
        return self.contract.input.spatial_dims

    @property
    def in_channels(self) -> int:
        assert self.contract is not None
        return self.contract.input.channels

    @property
    def saliency_methods(self) -> tuple[str, ...]:
        assert self.contract is not None
        return self.contract.saliency_methods

    # -- running ------------------------------------------------------------------------------
    def check_input(self, image: torch.Tensor, source: str | None = None) -> None:
        """Raise :class:`ModelMismatchError` when ``image`` (``(C, *spatial)``) does not fit;
        the message says what the bundle expects."""
        assert self.contract is not None
        spec = self.contract.input
        spatial = tuple(int(s) for s in image.shape[1:])
        dims = len(spatial) if spec.spatial_dims == 3 else sum(1 for s in spatial if s > 1)
        if spec.spatial_dims == 3 and (len(spatial) < 3 or min(spatial) < 2):
            raise ModelMismatchError(
                f"bundle {self.name!r} segments 3D volumes ({spec.describe()}), but this input "
                f"is a 2D image {'x'.join(map(str, spatial))}",
                path=source,
                hint="give a volume (a DICOM series folder or a NIfTI), or a 2D bundle",
            )
        if spec.spatial_dims == 2 and dims > 2:
            raise ModelMismatchError(
                f"bundle {self.name!r} segments 2D images ({spec.describe()}), but this input is "
                f"a volume {'x'.join(map(str, spatial))}",
                path=source,
                hint="give a 2D image, or a 3D bundle",
            )
        if int(image.shape[0]) != spec.channels:
            how = (
                " as one file per channel with `medxai segment --channels FILE...`, or as one 4D "
                "NIfTI with the channels in its 4th axis, in this order (`medxai channels "
                "FILE... -o case.nii.gz` stacks one file per channel)"
                if spec.channels > 1
                else ""
            )
            raise ModelMismatchError(
                f"bundle {self.name!r} expects {spec.channels} input channel(s)"
                + (f" ({', '.join(spec.channel_names)})" if spec.channel_names else "")
                + f", this input has {int(image.shape[0])}",
                path=source,
                hint=f"give {spec.channels} channel(s){how}",
            )

    def _as_input(self, image: torch.Tensor) -> Any:
        """medxai's reader output as ``LoadImaged`` (float32, channel-first) would give it."""
        from monai.data import MetaTensor

        meta = dict(getattr(image, "meta", {}) or {})
        affine = getattr(image, "affine", None)
        if affine is None:
            affine = torch.eye(4, dtype=torch.float64)
        meta["original_channel_dim"] = 0
        meta.pop("affine", None)
        arr = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return MetaTensor(
            arr.to(torch.float32).clone(), affine=torch.as_tensor(affine).clone(), meta=meta
        )

    def preprocess(self, image: torch.Tensor) -> dict[str, Any]:
        """The bundle's preprocessing (without ``LoadImaged``) of ``image``: the data dict, whose
        ``image_key`` entry is the model-grid ``MetaTensor`` ``(C, *model_spatial)``."""
        from monai.transforms import apply_transform

        data = {self.image_key: self._as_input(image)}
        return self._guard(lambda: apply_transform(self.pre, data), "preprocessing")

    def _guard(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except Exception as exc:  # transforms raise many types, wrapped by apply_transform
            missing = _missing_module(exc)
            if missing:
                raise ModelError(
                    f"the bundle's {what} needs the package {missing!r}, which is not installed",
                    path=self.path,
                    hint=_package_hint(missing),
                ) from exc
            cause: BaseException = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise ModelError(
                f"the bundle's {what} failed on this input "
                f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})",
                path=self.path,
            ) from exc

    def model_input(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(1, C, *model_spatial)`` float tensor for ``image`` and the data dict needed by
        :meth:`to_input_grid`."""
        data = self.preprocess(image)
        x = data[self.image_key]
        return x.as_tensor()[None].float(), data

    def to_input_grid(self, t: torch.Tensor, data: dict[str, Any]) -> torch.Tensor:
        """Bring ``(K, *model_spatial)`` maps (e.g. saliency) back onto the input grid with
        MONAI's inverse of the bundle's preprocessing (linear interpolation)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        ref = data[self.image_key]
        mt = MetaTensor(
            t.float(),
            meta=copy.deepcopy(ref.meta),
            applied_operations=copy.deepcopy(ref.applied_operations),
        )
        inv = Invertd(
            keys="pred",
            transform=self.pre,
            orig_keys=self.image_key,
            nearest_interp=False,
            to_tensor=True,
        )
        out = self._guard(lambda: inv({self.image_key: ref, "pred": mt}), "inversion")["pred"]
        return out.as_tensor() if hasattr(out, "as_tensor") else out

    def run(
        self,
        image: torch.Tensor,
        device: torch.device,
        *,
        roi_size: Sequence[int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Segment ``image`` as ``SupervisedEvaluator`` would: preprocessing, collate, inferer
        (in eval mode without gradients; float16 autocast if the bundle asks for amp and
        ``device`` is CUDA), decollate, postprocessing (with its ``Invertd``).

        Returns:
            ``(probabilities, labels)`` on the input grid: probabilities ``(K, *spatial)`` as
            they stood after the bundle's ``Invertd`` when it inverts activations (else None),
            and the ``(1, *spatial)`` label map.
        """
        import contextlib

        from monai.data import decollate_batch, list_data_collate
        from monai.transforms import apply_transform

        assert self.contract is not None
        data = self.preprocess(image)
        batch = list_data_collate([data])
        x = batch[self.image_key].to(device)
        inferer = copy.copy(self.inferer)
        settings = {
            "roi_size": list(roi_size) if roi_size is not None else None,
            "overlap": overlap,
            "sw_batch_size": sw_batch_size,
        }
        for attr, value in settings.items():
            if value is not None and hasattr(inferer, attr):
                setattr(inferer, attr, value)
        net = self.network
        was_training = net.training
        amp = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.contract.inference.amp and device.type == "cuda"
            else contextlib.nullcontext()
        )
        try:
            net.eval()
            net.to(device)
            with torch.no_grad(), amp:
                pred = self._guard(lambda: inferer(x, net), "inferer")
        finally:
            net.train(was_training)
            net.to("cpu")
        batch["pred"] = pred
        item = decollate_batch(batch, detach=True)[0]
        probabilities = None
        discrete = False
        for t in self.post.transforms:
            item = self._guard(
                lambda t=t, item=item: apply_transform(t, item),
                f"postprocessing step {type(t).__name__}",
            )
            name = type(t).__name__
            if name.startswith("AsDiscrete"):
                discrete = True
            if name.startswith("Invert") and not discrete:
                p = item["pred"]
                probabilities = (p.as_tensor() if hasattr(p, "as_tensor") else p).float().cpu()
        lab = item["pred"]
        lab = (lab.as_tensor() if hasattr(lab, "as_tensor") else torch.as_tensor(lab)).cpu()
        if lab.ndim == image.ndim - 1:
            lab = lab[None]
        if tuple(lab.shape[1:]) != tuple(image.shape[1:]):
            raise ModelError(
                f"the bundle's postprocessing gives a label map of {tuple(lab.shape[1:])} voxels "
                f"for an input of {tuple(image.shape[1:])}",
                path=self.path,
                hint="its postprocessing needs an Invertd of the preprocessing",
            )
        if lab.shape[0] != 1:
            raise ModelError(
                f"the bundle's postprocessing gives {lab.shape[0]} channels, not a label map",
                path=self.path,
                hint="end its postprocessing with AsDiscreted(argmax=True)",
            )
        dtype = torch.uint8 if float(lab.max()) < 256 else torch.int16
        labels = lab.round().to(dtype)
        if probabilities is not None and tuple(probabilities.shape[1:]) != tuple(lab.shape[1:]):
            probabilities = None
        return probabilities, labels

    def describe(self) -> dict[str, Any]:
        """What medxai understood of the bundle, as plain data (``medxai models describe``)."""
        assert self.contract is not None
        c = self.contract
        params = sum(int(p.numel()) for p in self.network.parameters())
        inf = c.inference
        return {
            "name": c.name,
            "version": c.version,
            "path": str(self.path),
            "form": c.form,
            "weights": c.weights,
            "weights_sha256": self.weights_sha256,
            "network": c.network,
            "parameters": params,
            "input": {
                "spatial_dims": c.input.spatial_dims,
                "channels": c.input.channels,
                "channel_names": list(c.input.channel_names),
                "modalities": list(c.input.modalities),
            },
            "preprocessing": list(c.preprocessing),
            "inferer": {
                "class": inf.inferer,
                "roi_size": list(inf.roi_size) if inf.roi_size else None,
                "overlap": inf.overlap,
                "sw_batch_size": inf.sw_batch_size,
                "blend_mode": inf.blend_mode,
                "amp": inf.amp,
            },
            "postprocessing": list(c.postprocessing),
            "labels": [lab.as_dict() for lab in c.labels],
            "replaced_by_medxai": list(c.replaced),
            "saliency_methods": list(c.saliency_methods),
        }


def _read_metadata(root: Path) -> dict[str, Any]:
    meta = root / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelError(f"is not valid JSON ({exc})", path=meta) from exc
    return data if isinstance(data, dict) else {}


def load_monai_bundle(path: str | Path) -> MonaiBundle:
    """Load a MONAI-form bundle folder (see the module docstring).

    ``models/model.pt`` (a state dict for ``network_def``) is used when present, else
    ``models/model.ts`` (TorchScript; ``network_def`` may then be absent).

    Raises:
        ModelError: one clear line for: no inference config, no ``network_def`` (and no
            TorchScript), a ``_target_`` that does not resolve, a package the config needs that
            is not installed (named), weights that do not fit ``network_def``, a ``model.pt``
            that is not a plain state dict (refused by ``weights_only``).
    """
    from monai.bundle import ConfigParser

    root = Path(path).resolve()
    cfg_path = _config_file(root)
    if cfg_path is None:
        raise ModelError(
            "is not a MONAI bundle: no configs/inference.json (or .yaml)",
            path=root,
            hint="a MONAI bundle folder holds configs/metadata.json, "
            "configs/inference.json and models/model.pt or models/model.ts",
        )
    metadata = _read_metadata(root)
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg_path))
    except Exception as exc:  # json/yaml errors
        raise ModelError(f"cannot be read ({type(exc).__name__}: {exc})", path=cfg_path) from exc
    parser["bundle_root"] = str(root)
    if metadata:
        parser.read_meta(metadata)
    raw = copy.deepcopy(parser.get())
    pt, ts = root / "models" / "model.pt", root / "models" / "model.ts"
    scripted = not pt.is_file() and ts.is_file()
    if not pt.is_file() and not ts.is_file():
        raise ModelError(
            "bundle has no weights: neither models/model.pt nor models/model.ts",
            path=root,
            hint="fetch them with `python -m monai.bundle download`",
        )
    if not scripted and "network_def" not in raw:
        raise ModelError(
            "has no 'network_def' (the network to load models/model.pt into)",
            path=cfg_path,
            hint="add network_def, or give models/model.ts",
        )
    # optional packages named by the transforms the bundle uses (checked before any work)
    used = [
        t.rsplit(".", 1)[-1]
        for key in ("preprocessing", "postprocessing", "inferer")
        for t in _targets(raw.get(key))
    ]
    for name in used:
        if name in OPTIONAL_PACKAGES:
            module, package = OPTIONAL_PACKAGES[name]
            if not _module_available(module):
                raise ModelError(
                    f"{name} in the bundle's config needs the package {package!r}, "
                    "which is not installed",
                    path=cfg_path,
                    hint=f"install it: pip install {package}",
                )
    for key in ("preprocessing", "inferer", "postprocessing"):
        if key not in raw:
            raise ModelError(
                f"has no {key!r}",
                path=cfg_path,
                hint="medxai runs the bundle's preprocessing, inferer and "
                "postprocessing; a MONAI inference config defines all three",
            )
    if scripted:
        try:
            network = torch.jit.load(str(ts), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError and others for bad archives
            raise ModelError(
                f"is not a TorchScript archive ({type(exc).__name__})", path=ts
            ) from exc
        net_name = getattr(network, "original_name", type(network).__name__)
        weights_file = ts
    else:
        network = _instantiate(parser, "network_def", cfg_path)
        if not isinstance(network, torch.nn.Module):
            raise ModelError(
                f"network_def builds a {type(network).__name__}, not a torch network", path=cfg_path
            )
        _load_weights(network, pt)
        net_name = type(network).__name__
        weights_file = pt
    network.eval()
    pre = _instantiate(parser, "preprocessing", cfg_path)
    inferer = _instantiate(parser, "inferer", cfg_path)
    post = _instantiate(parser, "postprocessing", cfg_path)
    for obj, key in ((pre, "preprocessing"), (post, "postprocessing")):
        if not hasattr(obj, "transforms"):
            raise ModelError(
                f"{key!r} is a {type(obj).__name__}, expected a Compose", path=cfg_path
            )
    loaders, _ = _strip(pre, _LOADERS)
    savers, _ = _strip(post, _SAVERS)
    image_key = "image"
    if loaders and getattr(loaders[0], "keys", None):
        image_key = str(loaders[0].keys[0])
    replaced = [f"{type(t).__name__} -> medxai reader (DICOM/NIfTI/NRRD/picture)" for t in loaders]
    replaced += [
        f"{type(t).__name__} -> medxai writers (NIfTI, DICOM SEG, PNG, report)" for t in savers
    ]
    replaced.append("handlers/evaluator/dataset/dataloader -> not instantiated")
    net_def = raw.get("network_def") if isinstance(raw.get("network_def"), dict) else {}
    in_meta = _channel_def(metadata, "inputs", "image")
    channels = int(net_def.get("in_channels") or in_meta.get("num_channels") or 1)
    dims = net_def.get("spatial_dims")
    if not isinstance(dims, int):
        shape = in_meta.get("spatial_shape") or [0, 0, 0]
        dims = len(shape) if isinstance(shape, list) and len(shape) in (2, 3) else 3
    cnames = in_meta.get("channel_def") or {}
    try:
        channel_names = tuple(str(v) for _, v in sorted((int(k), v) for k, v in cnames.items()))
    except (TypeError, ValueError):
        channel_names = ()
    if len(channel_names) != channels:
        channel_names = ()
    modality = in_meta.get("modality")
    modalities = tuple(m.strip() for m in str(modality).split(",")) if modality else ()
    out_channels = (
        net_def.get("out_channels") if isinstance(net_def.get("out_channels"), int) else None
    )
    labels = _labels(raw, metadata, out_channels, cfg_path)
    try:
        amp = (
            bool(parser.get_parsed_content("evaluator#amp", instantiate=False))
            if "evaluator" in raw
            and isinstance(raw["evaluator"], dict)
            and "amp" in raw["evaluator"]
            else bool(parser.get_parsed_content("amp"))
            if "amp" in raw
            else False
        )
    except Exception:  # a reference we cannot resolve without building the evaluator
        amp = bool(raw.get("amp", False))
    roi = getattr(inferer, "roi_size", None)
    inference = InferenceSpec(
        mode="monai",
        roi_size=tuple(int(v) for v in roi) if roi is not None else None,
        overlap=float(
            getattr(inferer, "overlap", DEFAULT_OVERLAP)
            if not isinstance(getattr(inferer, "overlap", None), (list, tuple))
            else inferer.overlap[0]
        ),
        sw_batch_size=int(getattr(inferer, "sw_batch_size", 1)),
        blend_mode=str(
            getattr(
                getattr(inferer, "mode", "constant"), "value", getattr(inferer, "mode", "constant")
            )
        ),
        inferer=type(inferer).__name__,
        amp=amp,
    )
    contract = ModelContract(
        name=str(metadata.get("name", root.name)),
        version=str(metadata.get("version", "0")),
        form="monai",
        weights="torchscript" if scripted else "state_dict",
        network=str(net_name),
        input=InputSpec(
            spatial_dims=int(dims),
            channels=channels,
            modalities=modalities,
            channel_names=channel_names,
        ),
        inference=inference,
        labels=labels,
        preprocessing=tuple(_describe_transform(t) for t in pre.transforms),
        postprocessing=tuple(_describe_transform(t) for t in post.transforms),
        replaced=tuple(replaced),
        layer_hooks=not scripted,
        # medxai's own key (plain MONAI ignores it): the default explanation of this model
        saliency=saliency_spec_from_config(raw.get("saliency")),
    )
    # a medxai-style view of the config, for code that reads ModelBundle.config
    view = {
        "input": {
            "spatial_dims": contract.input.spatial_dims,
            "channels": channels,
            "modalities": list(modalities),
        },
        "network_def": dict(net_def),
        "inference": {"mode": "monai"},
        "labels": [lab.as_dict() for lab in labels],
        "postprocessing": {},
    }
    meta_out = dict(metadata)
    meta_out.setdefault("name", contract.name)
    meta_out["weights_sha256"] = sha256_file(weights_file)
    return MonaiBundle(
        config=view,
        metadata=meta_out,
        network=network,
        path=root,
        contract=contract,
        monai_config=raw,
        pre=pre,
        inferer=inferer,
        post=post,
        image_key=image_key,
        scripted=scripted,
    )
