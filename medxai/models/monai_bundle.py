"""MONAI model-zoo bundles: load a folder in MONAI bundle layout and run it as the bundle says.

Layout (as ``monai.bundle download`` writes it)::

    BUNDLE/
      configs/metadata.json            name, version, network_data_format (inputs, channel_def)
      configs/inference.json | .yaml   monai.bundle.ConfigParser syntax
      models/model.pt                  a state dict (loaded with ``weights_only=True``), or
      models/model.ts                  a TorchScript network

From the config medxai takes ``network_def``, ``preprocessing``, ``inferer`` and
``postprocessing`` (and ``amp``, from ``evaluator#amp`` or ``amp``). The preprocessing runs as
written from its own ``LoadImaged`` on: medxai only puts its reader
(:class:`medxai.io.bundle_reader.MonaiLayoutReader`, which gives what MONAI's readers give) in
place of the ``reader`` the config names. The postprocessing's ``SaveImaged`` is replaced by
medxai's writers. Everything runs as the bundle says, in the way ``SupervisedEvaluator`` runs it
(collate, inferer, decollate, postprocessing), so the label map equals plain MONAI's; the
bundle's ``Invertd`` brings it onto the input grid. Handlers, evaluators, datasets and
dataloaders are never instantiated. Loading follows ``monai.bundle run``: ``bundle_root`` is the
folder, and the folder is on ``sys.path`` for ``scripts.*`` targets; the network is built on the
CPU (``torch.device('cuda')`` and ``torch.load`` in the config's expressions are made to load on
the CPU).

Labels come from ``metadata.json`` ``network_data_format.outputs.pred.channel_def`` when channel
0 is the background (softmax/argmax bundles). A bundle whose label values are not its channel
indices (e.g. BraTS: sigmoid channels TC/WT/ET become label values 1, 2, 4) names them in
``inference.json`` under the key ``medxai`` (plain MONAI ignores it)::

    "medxai": {"labels": [{"value": 1, "name": "tumor core"}, ...]}
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
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
#: Definitions shared by a bundle's configs (the MONAI tutorials' split), read before the
#: inference config when present, as ``--config_file "['configs/common.yaml', ...]"`` reads it.
COMMON_NAMES = ("common.json", "common.yaml", "common.yml")
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
            # "from einops import rearrange (No module named 'einops')": the module, not the name
            m = re.search(r"No module named ['\"]([A-Za-z_][\w.]*)", str(e)) or re.search(
                r"import (?:of )?['\"]?([A-Za-z_][\w.]*)", str(e)
            )
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
    for t in kept:  # a Compose inside the Compose (e.g. the saving steps grouped)
        if type(t).__name__ == "Compose" and isinstance(
            getattr(t, "transforms", None), (list, tuple)
        ):
            removed += _strip(t, names)[0]
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


def _checkpoint_keys(raw: dict[str, Any]) -> list[str]:
    """The keys a ``CheckpointLoader`` of the config loads the network from
    (``load_dict: {"model": "@network"}``: the key its ``CheckpointSaver`` saved it under)."""
    keys: list[str] = []
    for _, node in _walk(raw):
        if not isinstance(node, dict) or not str(node.get("_target_", "")).endswith(
            "CheckpointLoader"
        ):
            continue
        load = node.get("load_dict")
        if isinstance(load, dict):
            named = [str(k) for k, v in load.items() if "network" in str(v)]
            keys += named or [str(k) for k in load]
    return keys


def _tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _state_dict_in(state: Any, keys: Sequence[str]) -> Any:
    """The network's state dict inside a checkpoint: the file itself, or the entry under the
    config's ``CheckpointLoader`` key, ``state_dict``, ``model`` or ``network``, or the one
    entry that is a dict of tensors (an optimizer's state is not)."""
    if not isinstance(state, dict) or _tensor_dict(state):
        return state
    for key in (*keys, "state_dict", "model", "network"):
        if isinstance(state.get(key), dict):
            return state[key]
    candidates = [v for v in state.values() if _tensor_dict(v)]
    return candidates[0] if len(candidates) == 1 else state


def _without_wrapper_prefix(state: dict[str, Any], network: torch.nn.Module) -> dict[str, Any]:
    """A state dict saved from a ``DataParallel``/``DistributedDataParallel`` wrapper (every
    key starts with ``module.``) or a ``torch.compile`` one (``_orig_mod.``), the network's
    keys not, as the network's own keys."""
    own = list(network.state_dict())
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state) and not any(
                k.startswith(prefix) for k in own
            ):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _load_weights(network: torch.nn.Module, weights: Path, keys: Sequence[str] = ()) -> None:
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
    state = _state_dict_in(state, keys)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            "does not hold a state dict of tensors",
            path=weights,
            hint="save the weights with torch.save(network.state_dict(), 'model.pt')",
        )
    state = _without_wrapper_prefix(state, network)
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


def _argmax(raw: dict[str, Any]) -> bool:
    """Whether the postprocessing (top-level keys with ``post`` in their name, where chains
    assembled by expressions keep their transforms) takes an argmax over the channels."""
    for key, section in raw.items():
        if "post" not in str(key).lower() or not isinstance(section, (dict, list)):
            continue
        for _, node in [("", section), *_walk(section)]:
            if (
                isinstance(node, dict)
                and str(node.get("_target_", "")).rsplit(".", 1)[-1].startswith("AsDiscrete")
                and node.get("argmax") not in _OFF
            ):
                return True
    return False


def _value_maps(raw: dict[str, Any], parser: Any) -> list[dict[int, int]]:
    """``{channel index: label value}`` of each ``MapLabelValue(d)`` in the postprocessing
    (top-level keys with ``post`` in their name), in order."""
    maps = []
    for key, section in raw.items():
        if "post" not in str(key).lower() or not isinstance(section, (dict, list)):
            continue
        for cid, node in [(str(key), section), *_walk(section, str(key))]:
            name = str(node.get("_target_", "")) if isinstance(node, dict) else ""
            if not name.rsplit(".", 1)[-1].startswith("MapLabelValue"):
                continue
            try:
                orig, target = (
                    parser.get_parsed_content(f"{cid}#{arg}", instantiate=False)
                    for arg in ("orig_labels", "target_labels")
                )
                maps.append({int(o): int(t) for o, t in zip(orig, target, strict=True)})
            except Exception:  # not plain numbers: left as they are
                continue
    return maps


def _mapped_values(
    labels: tuple[LabelSpec, ...], raw: dict[str, Any], parser: Any
) -> tuple[LabelSpec, ...]:
    """Label values as the postprocessing's ``MapLabelValued`` gives them (channel indices ->
    the dataset's values); labels named under ``medxai`` are final already."""
    given = raw.get("medxai")
    if isinstance(given, dict) and given.get("labels"):
        return labels
    from dataclasses import replace

    for mapping in _value_maps(raw, parser):
        labels = tuple(replace(lab, value=mapping.get(lab.value, lab.value)) for lab in labels)
    return labels


def _channel_def(metadata: dict[str, Any], io: str, key: str) -> dict[str, Any]:
    ndf = metadata.get("network_data_format", {}) or {}
    return (ndf.get(io, {}) or {}).get(key, {}) or {}


def _labels(
    config: dict[str, Any], metadata: dict[str, Any], out_channels: int | None, path: Path
) -> tuple[LabelSpec, ...]:
    extra = _medxai_block(config)
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
    if names and ("background" in names.get(0, "").lower() or _argmax(config)):
        # argmax: channel k is the label value k, whatever channel 0 is called
        return labels_from_names(names)
    n = out_channels or int(pred.get("num_channels", 2) or 2)
    if names:
        # channels without a background channel (sigmoid outputs): value i + 1 per channel
        return labels_from_names({0: "background", **{k + 1: v for k, v in names.items()}})
    # one sigmoid channel thresholded: the values 0 and 1
    return labels_from_names({0: "background", **{k: f"label {k}" for k in range(1, max(n, 2))}})


@dataclass
class MonaiBundle(ModelBundle):
    """A loaded MONAI model-zoo bundle (see the module docstring).

    Attributes (besides :class:`ModelBundle`'s):
        contract: the typed :class:`ModelContract`.
        monai_config: the raw inference config (``ConfigParser``'s view before parsing).
        pre: the bundle's ``preprocessing`` ``Compose``, its ``LoadImaged`` reading with
            ``reader``.
        inferer: the bundle's inferer.
        post: the bundle's ``postprocessing`` ``Compose`` without its ``SaveImaged``.
        image_key: the data key the bundle's transforms read the image from.
        scripted: the network is TorchScript (``models/model.ts``).
        reader: medxai's reader in the bundle's ``LoadImaged`` (serves the image already read).
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
    reader: Any = None

    @property
    def over_slices(self) -> bool:
        """A 2D network that the bundle's inferer runs over the slices of a volume."""
        assert self.contract is not None
        return self.contract.inference.inferer == "SliceInferer"

    @property
    def spatial_dims(self) -> int:
        """The dimensions of the input the bundle takes (3 for a 2D network over slices)."""
        assert self.contract is not None
        return 3 if self.over_slices else self.contract.input.spatial_dims

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
        if spec.spatial_dims == 2 and dims > 2 and not self.over_slices:
            raise ModelMismatchError(
                f"bundle {self.name!r} segments 2D images ({spec.describe()}), but this input is "
                f"a volume {'x'.join(map(str, spatial))}",
                path=source,
                hint="give a 2D image, or a 3D bundle",
            )
        if int(image.shape[0]) != spec.channels and not self._channels_made(image, source):
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

    def _channels_made(self, image: torch.Tensor, source: str | Path | None) -> bool:
        """Whether the bundle's preprocessing makes the network's channel count from this
        input's (``RepeatChanneld`` for a grey image into a 3-channel network, a ``Lambdad``
        that averages colour into grey, a transform of its own): then the input fits."""
        assert self.contract is not None
        x = image
        if self.spatial_dims == 2 and x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]  # a single slice, as the run squeezes it
        try:
            data = self.preprocess(x, source)
        except ModelError:
            return False
        out = data.get(self.image_key)
        return isinstance(out, torch.Tensor) and int(out.shape[0]) == self.contract.input.channels

    def preprocess(self, image: torch.Tensor, source: str | Path | None = None) -> dict[str, Any]:
        """The bundle's preprocessing of ``image`` (medxai's channel-first ``MetaTensor``), from
        its own ``LoadImaged`` on: the loader is given ``{image_key: source}`` and its reader
        serves ``image`` in MONAI's layout (not read again). Returns the data dict, whose
        ``image_key`` entry is the model-grid ``MetaTensor`` ``(C, *model_spatial)``."""
        from monai.transforms import apply_transform

        data = {self.image_key: str(source) if source is not None else self.image_key}
        with self.reader.serving(image):
            return self._guard(lambda: apply_transform(self.pre, data), "preprocessing")

    def _guard(self, fn: Any, what: str) -> Any:
        try:
            with _quiet_monai():
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

    def model_input(
        self, image: torch.Tensor, source: str | Path | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(1, C, *model_spatial)`` float tensor for ``image`` and the data dict needed by
        :meth:`to_input_grid`."""
        data = self.preprocess(image, source)
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

    def run_full(
        self,
        image: torch.Tensor,
        device: torch.device,
        *,
        roi_size: Sequence[int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        source: str | Path | None = None,
    ) -> BundleOutput:
        """Segment ``image`` as ``SupervisedEvaluator`` would: preprocessing, collate, inferer
        (in eval mode without gradients; float16 autocast if the bundle asks for amp and
        ``device`` is CUDA), decollate, postprocessing (with its ``Invertd``).

        Returns:
            on the input grid: probabilities ``(K, *spatial)`` as they stood after the bundle's
            ``Invertd`` and any later step before its ``AsDiscreted``, when it inverts
            activations (else None), the ``(1, *spatial)`` label
            map, and the overlapping segments when the postprocessing folds several
            overlapping binary channels into the label map (:class:`BundleOutput`).
        """
        import contextlib

        from monai.data import decollate_batch, list_data_collate
        from monai.transforms import apply_transform

        assert self.contract is not None
        data = self.preprocess(image, source)
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
        self._check_segmentation_output(pred, x)
        batch["pred"] = pred
        item = decollate_batch(batch, detach=True)[0]
        probabilities = None
        discrete = inverted = False
        binary: torch.Tensor | None = None
        for t in self.post.transforms:
            item = self._guard(
                lambda t=t, item=item: apply_transform(t, item),
                f"postprocessing step {type(t).__name__}",
            )
            name = type(t).__name__
            if name.startswith("AsDiscrete"):
                discrete = True
            inverted = inverted or name.startswith("Invert")
            if inverted and not discrete:  # the last activations before the label map
                p = item["pred"]
                probabilities = (p.as_tensor() if hasattr(p, "as_tensor") else p).float().cpu()
            binary = _binary_channels(item["pred"], binary)
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
        segments = None
        if (
            binary is not None
            and tuple(binary.shape[1:]) == tuple(lab.shape[1:])
            and bool((binary.sum(0) > 1).any())
        ):
            segments = binary
        return BundleOutput(probabilities, labels, segments)

    def _check_segmentation_output(self, pred: Any, x: torch.Tensor) -> None:
        """A network whose output is not one tensor of maps over the input's grid (a
        classification's class scores, a detector's boxes, several named outputs) is refused:
        medxai takes one segmentation map."""
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else None
        if shape is not None and len(shape) == x.ndim:
            return
        what = f"an output of shape {shape}" if shape else f"a {type(pred).__name__}"
        raise ModelError(
            f"the bundle's network gives {what}, not one tensor of maps over the image's "
            f"{x.ndim - 2}D grid: it is not a segmentation bundle medxai can run (a "
            "classification or detection bundle, or several outputs?)",
            path=self.path,
            hint="run it with `python -m monai.bundle run`",
        )

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
            "saliency_default": c.saliency.as_dict(),
        }


@dataclass
class BundleOutput:
    """What :meth:`MonaiBundle.run_full` gives, on the input grid.

    Attributes:
        probabilities: ``(K, *spatial)`` after the bundle's ``Invertd`` (None when it inverts
            the discrete labels instead).
        labels: the ``(1, *spatial)`` label map (what plain MONAI's postprocessing gives).
        segments: ``(N, *spatial)`` bool, the binary channels the postprocessing folded into
            the label map when they overlap (e.g. BraTS: tumour core, whole tumour, enhancing
            tumour, each inside the next), one per foreground label in order of value; else
            None. A label map cannot hold the overlap; a DICOM SEG can.
    """

    probabilities: torch.Tensor | None
    labels: torch.Tensor
    segments: torch.Tensor | None = None


def _binary_channels(pred: Any, kept: torch.Tensor | None) -> torch.Tensor | None:
    """The latest several-channel 0/1 state of the postprocessing's ``pred`` (``kept`` when
    ``pred`` is not one)."""
    t = pred.as_tensor() if hasattr(pred, "as_tensor") else torch.as_tensor(pred)
    if (
        t.ndim < 3
        or t.shape[0] < 2
        or t.is_floating_point()
        and not bool(((t == 0) | (t == 1)).all())
    ):
        return kept
    if not t.is_floating_point() and not bool(((t == 0) | (t == 1)).all()):
        return kept
    return t.detach().cpu().bool()


def _read_metadata(root: Path) -> dict[str, Any]:
    meta = root / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelError(f"is not valid JSON ({exc})", path=meta) from exc
    return data if isinstance(data, dict) else {}


# -- loading, in steps ------------------------------------------------------------------------
def _locate(path: str | Path) -> tuple[Path, Path]:
    """The bundle folder and its inference config."""
    root = Path(path).resolve()
    cfg_path = _config_file(root)
    if cfg_path is None:
        raise ModelError(
            "is not a MONAI bundle: no configs/inference.json (or .yaml)",
            path=root,
            hint="a MONAI bundle folder holds configs/metadata.json, "
            "configs/inference.json and models/model.pt or models/model.ts",
        )
    return root, cfg_path


def load_checkpoint_on_cpu(path: str | Path, *args: Any, **kwargs: Any) -> Any:
    """``torch.load`` for a checkpoint that a bundle's config loads itself (e.g. a DiNTS
    architecture file): on the CPU whatever ``map_location`` the config asks, with
    ``weights_only=True`` allowing numpy arrays (and nothing else) to be unpickled."""
    import numpy as np

    # numpy's dtype classes (what an array's dtype unpickles to), then the named globals
    allowed: list[Any] = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        module, _, attr = name.rpartition(".")
        if module.split(".")[0] != "numpy":
            continue  # left to weights_only, which refuses it
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    with torch.serialization.safe_globals(allowed):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _parse_config(root: Path, cfg_path: Path, metadata: dict[str, Any]) -> Any:
    """``ConfigParser`` of the config with ``bundle_root`` = the folder, as ``monai.bundle run``
    sets it; ``medxai_load_checkpoint`` is known to its expressions (see :func:`_on_cpu`)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(globals={"medxai_load_checkpoint": load_checkpoint_on_cpu})
    common = [cfg_path.parent / n for n in COMMON_NAMES if (cfg_path.parent / n).is_file()]
    try:
        parser.read_config([str(p) for p in (*common[:1], cfg_path)])
    except Exception as exc:  # json/yaml errors
        raise ModelError(f"cannot be read ({type(exc).__name__}: {exc})", path=cfg_path) from exc
    parser["bundle_root"] = str(root)
    if metadata:
        parser.read_meta(metadata)
    _macros_from_root(parser, root, cfg_path)
    return parser


def _macros_from_root(parser: Any, root: Path, cfg_path: Path) -> None:
    """Macros that copy from another config file (``"%configs/network.json#network_def"``) name
    it relative to the bundle folder, where ``monai.bundle run`` is run from: medxai (run from
    anywhere) gives them the folder's path, then expands every macro, so that the steps after
    see the whole config (the ``LoadImaged`` a macro brings in included)."""
    from monai.bundle import ConfigParser

    for cid, v in _string_leaves(parser.get()):
        if not v.startswith("%"):
            continue
        path, ids = ConfigParser.split_path_id(v[1:])
        if not path or Path(path).is_absolute():
            continue
        for base in (root, cfg_path.parent):
            if (base / path).is_file():
                parser[cid] = f"%{base / path}" + (f"#{ids}" if ids else "")
                break
    try:
        parser.resolve_macro_and_relative_ids()
    except Exception as exc:  # a file or an id the macro names that is not there
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(
            f"a macro (%...) of the config cannot be expanded ({type(exc).__name__}: {text})",
            path=cfg_path,
        ) from exc


def _weights_file(root: Path, raw: dict[str, Any], cfg_path: Path) -> tuple[Path, bool]:
    """``(weights, scripted)``: ``models/model.pt`` for ``network_def``, else ``model.ts``."""
    pt, ts = root / "models" / "model.pt", root / "models" / "model.ts"
    if not pt.is_file() and not ts.is_file():
        raise ModelError(
            "bundle has no weights: neither models/model.pt nor models/model.ts",
            path=root,
            hint="fetch them with `python -m monai.bundle download`",
        )
    scripted = not pt.is_file()
    if not scripted and _network_key(raw) not in raw:
        raise ModelError(
            "has no 'network_def' (the network to load models/model.pt into)",
            path=cfg_path,
            hint="add network_def, or give models/model.ts",
        )
    return (ts if scripted else pt), scripted


def _check_sections(raw: dict[str, Any], cfg_path: Path) -> None:
    for key in ("preprocessing", "inferer", "postprocessing"):
        if key not in raw:
            raise ModelError(
                f"has no {key!r}",
                path=cfg_path,
                hint="medxai runs the bundle's preprocessing, inferer and "
                "postprocessing; a MONAI inference config defines all three",
            )


def _check_optional_packages(raw: dict[str, Any], cfg_path: Path) -> None:
    """The optional packages named by the transforms the bundle uses, before any work (readers
    are not checked: medxai's reader replaces them)."""
    used = [
        t.rsplit(".", 1)[-1]
        for key in ("preprocessing", "postprocessing", "inferer")
        for t in _targets(raw.get(key))
    ]
    for name in used:
        if name in OPTIONAL_PACKAGES and not name.endswith("Reader"):
            module, package = OPTIONAL_PACKAGES[name]
            if not _module_available(module):
                raise ModelError(
                    f"{name} in the bundle's config needs the package {package!r}, "
                    "which is not installed",
                    path=cfg_path,
                    hint=f"install it: pip install {package}",
                )


#: Words in a transform's name that mark interactive guidance (clicks, points, scribbles).
_INTERACTIVE = ("Guidance", "Click", "Scribble")


def _refuse_interactive(raw: dict[str, Any], cfg_path: Path) -> None:
    """An interactive bundle (DeepEdit, DeepGrow) takes the user's clicks as extra input
    channels; ``medxai segment`` has none to give."""
    for target in _targets(raw):
        name = target.rsplit(".", 1)[-1]
        if any(word in name for word in _INTERACTIVE):
            raise ModelError(
                f"is an interactive bundle: its transform {name} adds guidance channels from "
                "the user's clicks, which medxai does not take (it segments without user input)",
                path=cfg_path,
                hint="run it in MONAI Label, or use an automatic segmentation bundle",
            )


def _string_leaves(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(config id, text)`` of every string inside ``node``'s dicts and lists (ids joined by
    ``#``), collected before the caller changes any."""
    out: list[tuple[str, str]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        key = f"{prefix}#{k}" if prefix else str(k)
        if isinstance(v, (dict, list)):
            out += _string_leaves(v, key)
        elif isinstance(v, str):
            out.append((key, v))
    return out


def _walk(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(config id, node)`` of every dict and list inside ``node`` (ids joined by ``#``)."""
    out: list[tuple[str, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        key = f"{prefix}#{k}" if prefix else str(k)
        if isinstance(v, (dict, list)):
            out.append((key, v))
            out += _walk(v, key)
    return out


#: Reader options that change the layout MONAI's readers give; medxai's reader gives the default.
_LAYOUT_OPTIONS = {
    "as_closest_canonical": True,
    "reverse_indexing": False,
    "swap_ij": False,
    "affine_lps_to_ras": False,
}


def _plug_reader(parser: Any, raw: dict[str, Any], reader: Any, cfg_path: Path) -> list[str]:
    """Put ``reader`` (medxai's, in MONAI's layout) in place of the ``reader`` of every
    ``LoadImage``/``LoadImaged`` of the config, whatever it names; what was replaced."""
    replaced = []
    for cid, node in _walk(raw):
        if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
            continue
        name = node["_target_"].rsplit(".", 1)[-1]
        if name not in _LOADERS:
            continue
        for option, value in _LAYOUT_OPTIONS.items():
            if option in node and node[option] == value:
                raise ModelError(
                    f"its {name} asks the reader for {option}={value}, a layout medxai's reader "
                    "does not give",
                    path=cfg_path,
                    hint=f"remove {option} from {cid}",
                )
        if node.get("channel_dim") is not None:
            raise ModelError(
                f"its {name} sets the reader's channel_dim={node['channel_dim']!r}, which "
                "medxai's reader does not take (it gives MONAI's default layout)",
                path=cfg_path,
                hint=f"remove channel_dim from {cid}; EnsureChannelFirstd(channel_dim=...) "
                "says where the channels are",
            )
        if node.get("converter") is not None:
            raise ModelError(
                f"its {name} gives the reader a converter ({_short(node['converter'])}), which "
                "medxai's reader does not take (it reads the picture itself)",
                path=cfg_path,
                hint=f"remove converter from {cid} and do the conversion in a transform after "
                f"{name} (e.g. a Lambdad)",
            )
        named = node.get("reader")
        parser[f"{cid}#reader"] = reader
        was = f"{name}(reader={named})" if named else name
        replaced.append(
            f"{was} reader -> medxai's reader in MONAI's layout (DICOM/NIfTI/NRRD/picture)"
        )
    return replaced


_CUDA_DEVICE = re.compile(r"torch\.device\(\s*(['\"])cuda(:\d+)?\1\s*\)")
_TORCH_LOAD = re.compile(r"\btorch\.load\(")


def _on_cpu(parser: Any, raw: dict[str, Any]) -> list[str]:
    """medxai builds the network on the CPU (and moves it to the device when it runs): in the
    config's expressions, ``torch.device('cuda')`` becomes the CPU and ``torch.load`` loads on
    the CPU with ``weights_only`` (numpy arrays allowed: :func:`load_checkpoint_on_cpu`). The
    DiNTS zoo configs load their architecture file with ``map_location=torch.device('cuda')``;
    plain MONAI users on a CPU override the same keys (``arch_ckpt``, ``dints_space#device``)."""
    changed = []

    for cid, v in _string_leaves(raw):
        if v.startswith("$") and cid.split("#")[0] != "imports":
            new = _TORCH_LOAD.sub(
                "medxai_load_checkpoint(", _CUDA_DEVICE.sub("torch.device('cpu')", v)
            )
            if new != v:
                parser[cid] = new
                changed.append(cid)
    return [f"{cid}: loaded/built on the CPU (cuda device, torch.load)" for cid in changed]


_OFF = (False, None, 0, "false", "False", "")


def _no_downloads(parser: Any, raw: dict[str, Any], scripted: bool) -> list[str]:
    """``pretrained`` switched off in the network section (``FlexibleUNet(pretrained=True)``,
    ``DenseNet121``, a backbone of the bundle's own): building the network would download
    weights that ``models/model.pt`` then replaces entirely (it is loaded strictly). medxai
    never downloads anything."""
    if scripted:
        return []
    key = _network_key(raw)
    net_def = _network_def(raw)
    nodes = [(key, net_def), *((f"{key}#{cid}", node) for cid, node in _walk(net_def))]
    changed = []
    for cid, node in nodes:
        if isinstance(node, dict) and "pretrained" in node and node["pretrained"] not in _OFF:
            parser[f"{cid}#pretrained"] = False
            changed.append(
                f"{cid}#pretrained -> False (the weights are models/model.pt; never downloaded)"
            )
    return changed


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """MONAI's own warnings (deprecated defaults, an ``Invertd`` with nothing to invert) are
    not shown while the bundle is built and run: medxai's output stays its own lines (and a
    refusal one line)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"monai(\.|$)")
        yield


@contextlib.contextmanager
def _scripts_importable(root: Path) -> Iterator[None]:
    """The bundle folder first on ``sys.path`` (as ``monai.bundle run`` puts it), so that
    ``scripts.x.Y`` targets import the bundle's own ``scripts/``; a ``scripts`` package imported
    from elsewhere (another bundle) is forgotten first."""
    if (root / "scripts").is_dir():
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            module = sys.modules[name]
            where = [str(p) for p in (getattr(module, "__path__", None) or [])]
            where.append(str(getattr(module, "__file__", None) or ""))
            if not any(w.startswith(str(root)) for w in where if w):
                del sys.modules[name]
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


def _network_error(exc: BaseException, raw: dict[str, Any], cfg_path: Path) -> ModelError | None:
    """One line for a ``network_def`` that does not build: an argument this MONAI's network
    does not take (a config for another MONAI version), or a file it loads that is absent."""
    import monai

    target = _network_def(raw).get("_target_", _network_key(raw))
    e: BaseException | None = exc
    while e is not None:
        text = str(e)
        m = re.search(r"unexpected keyword argument '(\w+)'", text)
        if isinstance(e, TypeError) and m:
            return ModelError(
                f"{_network_key(raw)} {target} cannot be built with MONAI {monai.__version__}: "
                "it has no "
                f"argument {m.group(1)!r} (the config was written for another MONAI version)",
                path=cfg_path,
                hint=f"use the bundle version made for MONAI {monai.__version__}, or rename or "
                f"remove {m.group(1)!r} in network_def",
            )
        m = re.search(r"missing \d+ required positional argument[s]?: (.+)$", text)
        if isinstance(e, TypeError) and m:
            return ModelError(
                f"{_network_key(raw)} {target} cannot be built with MONAI {monai.__version__}: "
                "it needs "
                f"the argument(s) {m.group(1)} (the config was written for another MONAI "
                "version)",
                path=cfg_path,
                hint="use the bundle version made for this MONAI version, or add the argument",
            )
        if isinstance(e, FileNotFoundError):
            missing = e.filename or text
            return ModelError(
                f"network_def {target} needs the file {missing}, which is not there",
                path=cfg_path,
                hint="it comes with the bundle's weights (`python -m monai.bundle download`)",
            )
        e = e.__cause__ or e.__context__
    return None


def _build_network(
    parser: Any, raw: dict[str, Any], weights: Path, scripted: bool, cfg_path: Path
) -> tuple[torch.nn.Module, str]:
    """The network in eval mode (TorchScript, or ``network_def`` with the state dict) and its
    class name."""
    if scripted:
        try:
            network = torch.jit.load(str(weights), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError and others for bad archives
            raise ModelError(
                f"is not a TorchScript archive ({type(exc).__name__})", path=weights
            ) from exc
        name = str(getattr(network, "original_name", type(network).__name__))
    else:
        try:
            network = _instantiate(parser, _network_key(raw), cfg_path)
        except ModelError as exc:
            better = _network_error(exc, raw, cfg_path)
            if better is None:
                raise
            raise better from exc
        if not isinstance(network, torch.nn.Module):
            raise ModelError(
                f"{_network_key(raw)} builds a {type(network).__name__}, not a torch network",
                path=cfg_path,
            )
        _load_weights(network, weights, _checkpoint_keys(raw))
        name = type(network).__name__
    network.eval()
    return network, name


def _build_chain(parser: Any, cfg_path: Path) -> tuple[Any, Any, Any]:
    """The bundle's ``preprocessing`` (with its own ``LoadImaged``), ``inferer`` and
    ``postprocessing`` (without ``SaveImaged``)."""
    pre = _instantiate(parser, "preprocessing", cfg_path)
    inferer = _instantiate(parser, "inferer", cfg_path)
    post = _instantiate(parser, "postprocessing", cfg_path)
    for obj, key in ((pre, "preprocessing"), (post, "postprocessing")):
        if not hasattr(obj, "transforms"):
            raise ModelError(
                f"{key!r} is a {type(obj).__name__}, expected a Compose", path=cfg_path
            )
    return pre, inferer, post


def _image_key(pre: Any, cfg_path: Path) -> str:
    """The key the bundle's ``LoadImaged`` reads the image from. A ``LoadImaged`` that reads
    several files per case under several keys (e.g. one per contrast phase, and the label) is
    refused: medxai gives one image per case."""
    loaders = [t for t in pre.transforms if type(t).__name__ in _LOADERS]
    if not loaders:
        raise ModelError(
            "its preprocessing has no LoadImaged (or LoadImage), where medxai gives the image",
            path=cfg_path,
            hint="start the preprocessing with LoadImaged(keys='image')",
        )
    keys = [str(k) for k in getattr(loaders[0], "keys", ("image",))]
    if len(keys) > 1 and not getattr(loaders[0], "allow_missing_keys", False):
        raise ModelError(
            f"its LoadImaged reads {len(keys)} files per case under the keys "
            f"{', '.join(keys)}; medxai gives one image per case under one key",
            path=cfg_path,
            hint="stack the images as channels of one file and read them under one key "
            "(as BraTS does), or run the bundle with `monai.bundle run`",
        )
    return keys[0] if keys else "image"


def _amp(parser: Any, raw: dict[str, Any]) -> bool:
    try:
        if isinstance(raw.get("evaluator"), dict) and "amp" in raw["evaluator"]:
            return bool(parser.get_parsed_content("evaluator#amp", instantiate=False))
        return bool(parser.get_parsed_content("amp")) if "amp" in raw else False
    except Exception:  # a reference we cannot resolve without building the evaluator
        return bool(raw.get("amp", False))


def _inference_spec(inferer: Any, amp: bool) -> InferenceSpec:
    roi = getattr(inferer, "roi_size", None)
    overlap = getattr(inferer, "overlap", DEFAULT_OVERLAP)
    mode = getattr(inferer, "mode", "constant")
    return InferenceSpec(
        mode="monai",
        roi_size=tuple(int(v) for v in roi) if roi is not None else None,
        overlap=float(overlap[0] if isinstance(overlap, (list, tuple)) else overlap),
        sw_batch_size=int(getattr(inferer, "sw_batch_size", 1)),
        blend_mode=str(getattr(mode, "value", mode)),
        inferer=type(inferer).__name__,
        amp=amp,
    )


def _network_key(raw: dict[str, Any]) -> str:
    """The config key of the network: ``network_def`` (the zoo's and the tutorials' name), else
    a ``network`` that defines it itself (``{"_target_": ...}``: configs that have no
    ``network_def``, whose ``network`` is then not ``$@network_def.to(@device)``)."""
    given = raw.get("network")
    if "network_def" not in raw and isinstance(given, dict) and "_target_" in given:
        return "network"
    return "network_def"


def _network_def(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw network section (:func:`_network_key`; {} when absent or not a dict)."""
    given = raw.get(_network_key(raw))
    return given if isinstance(given, dict) else {}


def _network_int(parser: Any, raw: dict[str, Any], name: str) -> int | None:
    """An integer argument of the network section, also when the config writes it as a
    reference or an expression (``"out_channels": "@num_classes"``); None when absent."""
    given = _network_def(raw).get(name)
    if isinstance(given, str) and given[:1] in ("@", "$"):
        try:
            given = parser.get_parsed_content(f"{_network_key(raw)}#{name}", instantiate=False)
        except Exception:  # an expression we cannot evaluate without building more
            return None
    if isinstance(given, bool) or not isinstance(given, int):
        return None
    return int(given)


_CONVS = ("Conv2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d")


def _first_conv(network: Any) -> tuple[int, int] | None:
    """``(spatial dims, in_channels)`` of the network's first convolution (TorchScript too),
    for a network section that does not say them (a network of the bundle's own ``scripts/``,
    ``FlexibleUNet``'s default 2D, a ``model.ts``)."""
    try:
        modules = list(network.modules())
    except Exception:  # not a module tree
        return None
    for m in modules:
        name = str(getattr(m, "original_name", type(m).__name__))
        if name in _CONVS:
            try:
                return int(name[-2]), int(m.in_channels)
            except (AttributeError, TypeError, ValueError):
                return int(name[-2]), 0
    return None


def _input_spec(
    raw: dict[str, Any], metadata: dict[str, Any], parser: Any, network: Any
) -> InputSpec:
    """Dimensions and channels: the network section's (references resolved), else the
    network's first convolution, else ``metadata.json``."""
    in_meta = _channel_def(metadata, "inputs", "image")
    conv = _first_conv(network)
    channels = _network_int(parser, raw, "in_channels")
    if channels is None:
        channels = int(in_meta.get("num_channels") or (conv[1] if conv else 0) or 1)
    dims = _network_int(parser, raw, "spatial_dims")
    if dims not in (2, 3):
        shape = in_meta.get("spatial_shape")
        if conv is not None:
            dims = conv[0]
        elif isinstance(shape, list) and len(shape) in (2, 3):
            dims = len(shape)
        else:
            dims = 3
    cnames = in_meta.get("channel_def") or {}
    try:
        channel_names = tuple(str(v) for _, v in sorted((int(k), v) for k, v in cnames.items()))
    except (TypeError, ValueError):
        channel_names = ()
    if len(channel_names) != channels:
        channel_names = ()
    modality = in_meta.get("modality")
    modalities = tuple(m.strip() for m in str(modality).split(",")) if modality else ()
    return InputSpec(
        spatial_dims=int(dims),
        channels=channels,
        modalities=modalities,
        channel_names=channel_names,
    )


def _saliency_default(raw: dict[str, Any], network: Any, scripted: bool) -> Any:
    """The bundle's ``saliency`` section when it has one (medxai's key), else the architecture's
    Grad-CAM layer, or occlusion where medxai knows none; the reason goes into the report."""
    from dataclasses import replace

    from medxai.models.architectures import cam_layer_choice

    spec = saliency_spec_from_config(raw.get("saliency"))
    if raw.get("saliency") is not None or scripted:
        return spec
    layer, reason = cam_layer_choice(network)
    if layer is None:
        return replace(spec, method="occlusion", layer=None, reason=reason)
    return replace(spec, method="gradcam", layer=layer, reason=reason)


def _contract(
    root: Path,
    raw: dict[str, Any],
    parser: Any,
    metadata: dict[str, Any],
    net: tuple[torch.nn.Module, str, bool],
    chain: tuple[Any, Any, Any],
    replaced: list[str],
) -> ModelContract:
    """The typed contract of the loaded bundle (``net``: network, class name, scripted;
    ``chain``: preprocessing, inferer, postprocessing)."""
    network, net_name, scripted = net
    pre, inferer, post = chain
    out_channels = _network_int(parser, raw, "out_channels")
    return ModelContract(
        name=str(metadata.get("name", root.name)),
        version=str(metadata.get("version", "0")),
        form="monai",
        weights="torchscript" if scripted else "state_dict",
        network=net_name,
        input=_input_spec(raw, metadata, parser, network),
        inference=_with_threshold(_inference_spec(inferer, _amp(parser, raw)), raw),
        labels=_mapped_values(
            _labels(raw, metadata, out_channels, _config_file(root) or root), raw, parser
        ),
        preprocessing=tuple(_describe_transform(t) for t in pre.transforms),
        postprocessing=tuple(_describe_transform(t) for t in post.transforms),
        replaced=tuple(replaced),
        layer_hooks=not scripted,
        saliency=_saliency_default(raw, network, scripted),
        extras=_layered_extras(raw),
    )


def _medxai_block(raw: dict[str, Any]) -> dict[str, Any]:
    given = raw.get("medxai")
    return given if isinstance(given, dict) else {}


def _with_threshold(spec: InferenceSpec, raw: dict[str, Any]) -> InferenceSpec:
    """``spec`` with the foreground threshold of the config's ``medxai.inference.threshold``
    (medxai's own bundles carry it; a binary bundle's label map is then cut there instead of
    by the argmax of its postprocessing)."""
    inference = _medxai_block(raw).get("inference")
    threshold = inference.get("threshold") if isinstance(inference, dict) else None
    if threshold is None:
        return spec
    return dataclasses.replace(spec, threshold=float(threshold))


def _layered_extras(raw: dict[str, Any]) -> dict[str, Any]:
    """The label clean-up of the config's ``medxai.postprocessing`` (``keep_largest_component``,
    ``fill_holes``...), run on the bundle's label map (:attr:`ModelContract.clean_up`)."""
    clean_up = _medxai_block(raw).get("postprocessing")
    return {"postprocessing": dict(clean_up)} if isinstance(clean_up, dict) and clean_up else {}


def _config_view(contract: ModelContract, raw: dict[str, Any]) -> dict[str, Any]:
    """A medxai-style view of the config, for code that reads ``ModelBundle.config``."""
    net_def = _network_def(raw)
    return {
        "input": {
            "spatial_dims": contract.input.spatial_dims,
            "channels": contract.input.channels,
            "modalities": list(contract.input.modalities),
        },
        "network_def": dict(net_def),
        "inference": {"mode": "monai"},
        "labels": [lab.as_dict() for lab in contract.labels],
        "postprocessing": {},
    }


def load_monai_bundle(path: str | Path) -> MonaiBundle:
    """Load a MONAI-form bundle folder (see the module docstring).

    ``models/model.pt`` (a state dict for ``network_def``) is used when present, else
    ``models/model.ts`` (TorchScript; ``network_def`` may then be absent).

    Raises:
        ModelError: one clear line for: no inference config, no ``network_def`` (and no
            TorchScript), a ``_target_`` that does not resolve, a package the config needs that
            is not installed (named), weights that do not fit ``network_def``, a ``model.pt``
            that is not a plain state dict (refused by ``weights_only``), a network this
            MONAI cannot build (the argument named), an interactive bundle (clicks), a
            ``LoadImaged`` of several files per case.
    """
    with _quiet_monai():
        return _load(path)


def _load(path: str | Path) -> MonaiBundle:
    from medxai.io.bundle_reader import MonaiLayoutReader

    root, cfg_path = _locate(path)
    metadata = _read_metadata(root)
    parser = _parse_config(root, cfg_path, metadata)
    raw = copy.deepcopy(parser.get())
    weights, scripted = _weights_file(root, raw, cfg_path)
    _check_sections(raw, cfg_path)
    _refuse_interactive(raw, cfg_path)
    _check_optional_packages(raw, cfg_path)
    reader = MonaiLayoutReader()
    replaced = _plug_reader(parser, raw, reader, cfg_path)
    replaced += _on_cpu(parser, raw)
    replaced += _no_downloads(parser, raw, scripted)
    with _scripts_importable(root):
        pre, inferer, post = _build_chain(parser, cfg_path)
        image_key = _image_key(pre, cfg_path)
        network, net_name = _build_network(parser, raw, weights, scripted, cfg_path)
        savers, _ = _strip(post, _SAVERS)
        replaced += [
            f"{type(t).__name__} -> medxai writers (NIfTI, DICOM SEG, PNG, report)" for t in savers
        ]
        replaced.append("handlers/evaluator/dataset/dataloader -> not instantiated")
        contract = _contract(
            root,
            raw,
            parser,
            metadata,
            (network, net_name, scripted),
            (pre, inferer, post),
            replaced,
        )
    meta_out = dict(metadata)
    meta_out.setdefault("name", contract.name)
    meta_out["weights_sha256"] = sha256_file(weights)
    return MonaiBundle(
        config=_config_view(contract, raw),
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
        reader=reader,
    )
