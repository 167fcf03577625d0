"""Model bundles: a folder in MONAI bundle layout holding everything inference needs.

Layout::

    BUNDLE/
      configs/metadata.json    MONAI's metadata (network_data_format with channel_def) plus the
                               card: name, version, task, data, metrics, weights SHA-256, ...
      configs/inference.json   a MONAI inference config (network_def, preprocessing, inferer,
                               postprocessing) with medxai's settings under the key "medxai"
      models/model.pt          the network's state dict (loaded with ``weights_only=True``)
      docs/README.md           the model card in prose (optional)

The on-disk forms (form 2, written since MONAI compatibility; form 1, still read) are described
in :mod:`medxai.models.bundle_form`. In memory, :attr:`ModelBundle.config` is medxai's view: the
keys below (form 1's top level, form 2's ``medxai`` block) with ``network_def``:

- ``network_def``: ``{"_target_": "monai.networks.nets.UNet", **kwargs}``; MONAI's
  ``ConfigParser`` instantiates it as it is.
- ``input``: ``spatial_dims`` (2 or 3), ``channels`` (1 grey, 3 RGB), ``modalities`` (DICOM
  modality codes the model was made for; empty means any).
- ``preprocessing``: ``spatial_size`` (resize target, whole-image mode) or ``spacing`` (mm, sliding
  window mode), ``intensity``: ``{"kind": "scale", "a_min", "a_max"}`` (linear to [0, 1], clipped)
  or ``{"kind": "zscore"}`` (per image, non-zero voxels).
- ``inference``: ``mode`` (``whole_image`` or ``sliding_window``), ``roi_size``, ``overlap``,
  ``sw_batch_size``, ``blend_mode``, ``tta`` (test-time augmentation of whole-image models:
  ``none``, ``flips`` or ``dihedral``; older bundles say ``tta_flips: true``), ``tta_sizes``
  (extra input sizes for multi-scale TTA, e.g. ``[[224, 224]]``: the probabilities of every
  size are averaged on the input's grid), ``threshold`` (binary models only: the foreground is
  where its probability exceeds this value instead of the argmax, which equals 0.5).
- ``postprocessing`` (optional): ``keep_largest_component``, ``fill_holes``
  (see :mod:`medxai.postprocess`).
- ``labels``: list of ``{"value", "name", "color"}``; value 0 is background.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medxai.choices import POSTPROCESSING_KEYS, TTA_CHOICES
from medxai.errors import BundleIntegrityError, ModelError
from medxai.io.atomic import write_bytes_atomic
from medxai.models.bundle_form import (
    FORM,
    medxai_form_of,
    medxai_view,
    misplaced_keys,
    monai_inference_config,
    monai_metadata,
)
from medxai.models.contract import (
    ModelContract,
    contract_from_medxai_config,
    saliency_spec_from_config,
)
from medxai.models.networks import build_network

__all__ = [
    "ModelBundle",
    "load_bundle",
    "save_bundle",
    "convert_bundle",
    "write_bundle_configs",
    "sha256_file",
]

_TARGET_PREFIX = "monai.networks.nets."


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelBundle:
    """A loaded (or about to be saved) model bundle.

    Attributes:
        config: the content of ``configs/inference.json``.
        metadata: the content of ``configs/metadata.json``.
        network: the network with its weights, in eval mode, on the CPU.
        path: the bundle folder it was loaded from, if any.
    """

    config: dict[str, Any]
    metadata: dict[str, Any]
    network: torch.nn.Module
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- conveniences read from the config ----------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "unnamed"))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def weights_sha256(self) -> str | None:
        return self.metadata.get("weights_sha256")

    @property
    def spatial_dims(self) -> int:
        return int(self.config["input"]["spatial_dims"])

    @property
    def in_channels(self) -> int:
        return int(self.config["input"]["channels"])

    @property
    def labels(self) -> list[dict[str, Any]]:
        return list(self.config.get("labels", []))

    @property
    def foreground_labels(self) -> list[dict[str, Any]]:
        return [lab for lab in self.labels if int(lab["value"]) != 0]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.config.get("preprocessing", {}))

    @property
    def inference(self) -> dict[str, Any]:
        return dict(self.config.get("inference", {}))

    @property
    def contract(self) -> ModelContract:
        """The typed :class:`~medxai.models.contract.ModelContract` of this bundle, parsed from
        its config (validated on load). Parsed on each access, because medxai-form bundles
        stay editable (``config`` is a plain dict that packaging scripts change before saving);
        it is a few dict reads."""
        return contract_from_medxai_config(self.config, self.metadata)

    @property
    def saliency_methods(self) -> tuple[str, ...]:
        """The saliency methods that apply to this model's network."""
        return self.contract.saliency_methods


def network_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """Build the (untrained) network described by ``config["network_def"]``."""
    try:
        net_def = dict(config["network_def"])
        target = str(net_def.pop("_target_"))
    except (KeyError, TypeError) as exc:
        raise ModelError("inference config has no network_def with a _target_") from exc
    name = target[len(_TARGET_PREFIX) :] if target.startswith(_TARGET_PREFIX) else target
    return build_network(name, net_def)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise ModelError(
            "is not a model bundle: file missing",
            path=path,
            hint="a bundle folder holds configs/metadata.json, configs/inference.json "
            "and models/model.pt; see `medxai models`",
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"is not valid JSON ({exc})", path=path) from exc
    if not isinstance(data, dict):
        raise ModelError("must hold a JSON object", path=path)
    return data


def _check_inference_options(config: dict[str, Any], root: Path) -> None:
    tta = config.get("inference", {}).get("tta")
    if tta is not None and tta not in TTA_CHOICES:
        raise ModelError(
            f"inference.tta is {tta!r}",
            path=root / "configs" / "inference.json",
            hint=f"use one of {', '.join(TTA_CHOICES)}",
        )
    sizes = config.get("inference", {}).get("tta_sizes") or []
    dims = config.get("input", {}).get("spatial_dims")
    if not isinstance(sizes, list) or any(
        not isinstance(s, list)
        or len(s) != dims
        or not all(isinstance(v, int) and v > 0 for v in s)
        for s in sizes
    ):
        raise ModelError(
            f"inference.tta_sizes is {sizes!r}",
            path=root / "configs" / "inference.json",
            hint=f"a list of input sizes with {dims} positive integers each, e.g. [[224, 224]]",
        )
    axes = config.get("inference", {}).get("tta_axes")
    if axes is not None and (
        not isinstance(axes, list)
        or not axes
        or not all(isinstance(a, int) and 0 <= a < int(dims or 3) for a in axes)
    ):
        raise ModelError(
            f"inference.tta_axes is {axes!r}",
            path=root / "configs" / "inference.json",
            hint=f"a list of model-grid axes below {dims} to mirror, e.g. [0] (left-right in RAS)",
        )
    threshold = config.get("inference", {}).get("threshold")
    if threshold is not None:
        classes = config.get("network_def", {}).get("out_channels")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 < threshold < 1
        ):
            raise ModelError(
                f"inference.threshold is {threshold!r}",
                path=root / "configs" / "inference.json",
                hint="a foreground probability between 0 and 1, e.g. 0.45",
            )
        if classes != 2:
            raise ModelError(
                f"inference.threshold is set but the network has {classes} output channels",
                path=root / "configs" / "inference.json",
                hint="a threshold applies to binary (2-channel) models; remove it",
            )
    unknown = sorted(set(config.get("postprocessing") or {}) - set(POSTPROCESSING_KEYS))
    if unknown:
        raise ModelError(
            f"unknown postprocessing step(s) {unknown}",
            path=root / "configs" / "inference.json",
            hint=f"known steps: {', '.join(POSTPROCESSING_KEYS)}",
        )
    try:
        saliency_spec_from_config(config.get("saliency"))
    except ModelError as exc:
        raise ModelError(
            exc.detail, path=root / "configs" / "inference.json", hint=exc.hint
        ) from exc


def load_bundle(path: str | Path, *, verify: bool = True) -> ModelBundle:
    """Load a bundle folder: configs, network and weights.

    Args:
        path: the bundle folder.
        verify: check the weights against ``metadata["weights_sha256"]`` before loading them.

    Raises:
        ModelError: the folder is not a bundle or its weights do not fit its network.
        BundleIntegrityError: the weights' SHA-256 differs from the recorded one.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelError(
            "is not a model bundle folder",
            path=root,
            hint="pass a bundled model name (see `medxai models`) or a bundle folder",
        )
    raw = _read_json(root / "configs" / "inference.json")
    metadata = _read_json(root / "configs" / "metadata.json")
    form = medxai_form_of(raw)
    if form is None:
        raise ModelError(
            "is not a medxai bundle: configs/inference.json has neither a 'medxai' block nor "
            "an 'input' block",
            path=root / "configs" / "inference.json",
            hint="load MONAI model-zoo bundles with medxai.models.registry.load_any_bundle "
            "(--model PATH does)",
        )
    stray = misplaced_keys(raw)
    if stray:
        raise ModelError(
            f"has medxai settings at its top level ({', '.join(f'{k}: {raw[k]!r}' for k in stray)})"
            f", where medxai does not read them in this form ({FORM})",
            path=root / "configs" / "inference.json",
            hint='move them into its "medxai" block (see docs/bundles.md)',
        )
    config = medxai_view(raw)
    _check_inference_options(config, root)
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise ModelError("bundle has no weights file models/model.pt", path=root)
    expected = metadata.get("weights_sha256")
    if verify and expected:
        actual = sha256_file(weights)
        if actual != expected:
            raise BundleIntegrityError(
                f"weights SHA-256 is {actual}, but the bundle's metadata records {expected}",
                path=weights,
                hint="the weights were changed or damaged; restore them from the original bundle",
            )
    network = network_from_config(config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise ModelError(
            f"cannot load weights safely ({type(exc).__name__}: {exc})", path=weights
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(
            f"weights do not fit the network in inference.json: {exc}", path=weights
        ) from exc
    network.eval()
    return ModelBundle(
        config=config, metadata=metadata, network=network, path=root, extra={"form": form}
    )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Bundle files are written atomically and durably (fsync'd, with their folder)."""
    write_bytes_atomic(path, data, durable=True)


def _write_configs(root: Path, view: dict[str, Any], metadata: dict[str, Any]) -> None:
    """``configs/inference.json`` (form 2: MONAI keys + the ``medxai`` block) and
    ``configs/metadata.json`` (MONAI's form) of medxai's view of a bundle."""
    _atomic_write_bytes(
        root / "configs" / "metadata.json",
        (json.dumps(monai_metadata(view, metadata), indent=2) + "\n").encode(),
    )
    _atomic_write_bytes(
        root / "configs" / "inference.json",
        (json.dumps(monai_inference_config(view), indent=2) + "\n").encode(),
    )


def save_bundle(bundle: ModelBundle, path: str | Path, *, card: str | None = None) -> Path:
    """Write ``bundle`` to the folder ``path`` as a MONAI bundle (form 2, see
    :mod:`medxai.models.bundle_form`); records the weights' SHA-256 in the written metadata
    (``bundle`` itself is not changed: load the folder to get the saved bundle).

    Returns the bundle folder. Each file is written atomically.
    """
    root = Path(path)
    weights = root / "models" / "model.pt"
    state = {k: v.detach().cpu() for k, v in bundle.network.state_dict().items()}
    # saved through memory, so that the archive's internal name (and the SHA-256) does not
    # depend on a temporary file name: the same weights always give the same bytes
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write_bytes(weights, buffer.getvalue())
    metadata = copy.deepcopy(bundle.metadata)
    metadata["weights_sha256"] = sha256_file(weights)
    metadata.setdefault("monai_version", __import__("monai").__version__)
    metadata.setdefault("pytorch_version", torch.__version__.split("+")[0])
    _write_configs(root, bundle.config, metadata)
    if card is not None:
        _atomic_write_bytes(root / "docs" / "README.md", card.encode())
    return root


def write_bundle_configs(
    path: str | Path, config: dict[str, Any], metadata: dict[str, Any]
) -> None:
    """Write the two config files of a bundle folder from medxai's view of its config (either
    form is accepted) and its metadata, in form 2; the weights are not touched (packaging
    scripts copy them unchanged)."""
    _write_configs(Path(path), medxai_view(config), dict(metadata))


def convert_bundle(src: str | Path, dst: str | Path) -> Path:
    """Rewrite the medxai bundle ``src`` (either form) as a form-2 MONAI bundle in ``dst``.

    The weights file is copied byte for byte (its SHA-256, checked against the metadata first,
    stays the recorded one); docs and any other files are copied; only the two configs are
    rewritten. ``dst`` must not exist or be an empty folder (``src`` itself is never changed).

    Raises:
        ModelError: ``src`` is not a medxai bundle, or ``dst`` is not empty.
        BundleIntegrityError: the weights of ``src`` differ from its recorded SHA-256.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    bundle = load_bundle(src)  # checks the configs and the weights' hash
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelError(
            "exists and is not an empty folder",
            path=dst,
            hint="give a new folder for the converted bundle",
        )
    if dst.resolve() == src.resolve():
        raise ModelError("is the source bundle itself", path=dst, hint="give a new folder")
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if (
            item.is_dir()
            or rel.parts[0] == "configs"
            and rel.name
            in (
                "inference.json",
                "metadata.json",
            )
        ):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, dst / rel)
    _write_configs(dst, bundle.config, copy.deepcopy(bundle.metadata))
    converted = load_bundle(dst)
    if converted.config != bundle.config or converted.extra.get("form") != FORM:
        raise ModelError("the converted bundle does not read back as the source", path=dst)
    return dst
