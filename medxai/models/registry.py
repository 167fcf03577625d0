"""The registry of bundled models: one table feeds ``--model`` choices, ``medxai models`` and
:func:`load_model`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from medxai.errors import ModelError
from medxai.models.bundle import ModelBundle, load_bundle
from medxai.models.fit import FitRules, InputFacts, ModelChoice, choose_model

__all__ = [
    "BundledModel",
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "list_models",
    "resolve_model",
    "load_model",
    "load_any_bundle",
    "choose_bundled_model",
]

_BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside the package."""

    name: str
    folder: str
    summary: str

    @property
    def path(self) -> Path:
        return _BUNDLED_DIR / self.folder

    @property
    def available(self) -> bool:
        return (self.path / "models" / "model.pt").is_file()

    def card(self) -> dict[str, Any]:
        meta_path = self.path / "configs" / "metadata.json"
        return json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    def fit_rules(self) -> FitRules:
        """The fit rules of the bundle's ``configs/inference.json`` (read without torch)."""
        return _fit_rules(str(self.path / "configs" / "inference.json"))


@lru_cache(maxsize=16)
def _fit_rules(config_path: str) -> FitRules:
    return FitRules.from_bundle_config(json.loads(Path(config_path).read_text()))


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            "isic2018-lesion-unet",
            "isic2018_lesion_unet",
            "skin lesion segmentation in dermoscopy photos (2D RGB), ISIC 2018",
        ),
        BundledModel(
            "cxr-lungs-unet",
            "cxr_lungs_unet",
            "lung fields in chest radiographs (2D grey; DX/CR DICOM or pictures), Shenzhen",
        ),
        BundledModel(
            "hippocampus-unet",
            "hippocampus_unet",
            "hippocampus head and body/tail in hippocampus-centred T1 MR crops (3D), MSD Task04",
        ),
    ]
}
DEFAULT_MODEL = "isic2018-lesion-unet"


def list_models() -> list[BundledModel]:
    """Bundled models, in registry order."""
    return list(BUNDLED_MODELS.values())


def choose_bundled_model(facts: InputFacts, source: str | None = None) -> ModelChoice:
    """The bundled model (in registry order) whose fit rules accept ``facts``.

    Raises:
        ModelMismatchError: none does; the message says why each refused.
    """
    candidates = [(m.name, m.fit_rules()) for m in list_models() if m.available]
    return choose_model(facts, candidates, source)


def resolve_model(name_or_path: str | Path | None) -> Path:
    """The bundle folder for a bundled model name or a path to a bundle folder."""
    key = str(name_or_path or DEFAULT_MODEL)
    if key in BUNDLED_MODELS:
        model = BUNDLED_MODELS[key]
        if not model.available:
            raise ModelError(
                f"bundled model {key!r} has no weights in this installation",
                path=model.path,
                hint="reinstall medxai, or pass --model PATH",
            )
        return model.path
    path = Path(key)
    if path.is_dir():
        return path
    import difflib

    close = difflib.get_close_matches(key, list(BUNDLED_MODELS), n=1)
    raise ModelError(
        f"no bundled model or bundle folder named {key!r}",
        hint=(f"did you mean {close[0]!r}? " if close else "")
        + f"bundled models: {', '.join(BUNDLED_MODELS)}; or pass a bundle folder",
    )


def load_any_bundle(path: str | Path) -> ModelBundle:
    """Load a bundle folder of either form: medxai's own (:func:`load_bundle`) or a MONAI
    model-zoo bundle (:func:`medxai.models.monai_bundle.load_monai_bundle`)."""
    from medxai.models.monai_bundle import is_monai_bundle, load_monai_bundle

    return load_monai_bundle(path) if is_monai_bundle(path) else load_bundle(path)


@lru_cache(maxsize=4)
def _load_cached(path: str) -> ModelBundle:
    return load_any_bundle(path)


def load_model(name_or_path: str | Path | None = None, *, cache: bool = False) -> ModelBundle:
    """Load a bundled model by name (default :data:`DEFAULT_MODEL`) or a bundle folder
    (medxai's own form or a MONAI model-zoo bundle)."""
    path = resolve_model(name_or_path)
    return _load_cached(str(path.resolve())) if cache else load_any_bundle(path)
