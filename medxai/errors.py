"""One exception hierarchy for medxai.

Every error that a user can cause (a bad file, a wrong option, a model that does not fit the
input) is a :class:`MedxaiError`. Its message names the thing at fault, what was expected, what was
found and what to do. The CLI prints the message without a traceback and exits with
``exit_code``: 2 for input and usage errors, 1 for failures of the work itself.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "MedxaiError",
    "InputError",
    "UnsupportedInputError",
    "CorruptInputError",
    "SeriesError",
    "ModelError",
    "ModelMismatchError",
    "BundleIntegrityError",
    "OutputExistsError",
    "ExplainError",
    "ProcessingError",
]


class MedxaiError(Exception):
    """Base of every error medxai raises on purpose.

    Args:
        message: what went wrong, written for the user.
        path: the file or folder at fault, when there is one; it is put in front of the message.
        hint: what the user can do about it; appended to the message.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        self.detail = message
        text = f"{self.path}: {message}" if self.path else message
        if hint:
            text = f"{text}\n  hint: {hint}"
        super().__init__(text)


class InputError(MedxaiError):
    """The input cannot be used: missing, unreadable, or not what the operation needs."""


class UnsupportedInputError(InputError):
    """The input is readable but of a form or kind medxai does not handle."""


class CorruptInputError(InputError):
    """The input claims a form it does not honour (truncated, undecodable pixel data, ...)."""


class SeriesError(InputError):
    """A DICOM series (or a folder) cannot be assembled into one image."""


class ModelError(MedxaiError):
    """A model bundle is missing, malformed or cannot be loaded."""


class ModelMismatchError(ModelError):
    """The input does not fit what the model expects (dimensions, channels, modality)."""


class BundleIntegrityError(ModelError):
    """The weights of a bundle do not match the SHA-256 its metadata records."""


class OutputExistsError(MedxaiError):
    """An output is already there and overwriting was not asked for."""


class ExplainError(MedxaiError):
    """A saliency method cannot run with the given model, layer or target."""


class ProcessingError(MedxaiError):
    """The work itself failed (not the user's input); exit code 1."""

    exit_code = 1
