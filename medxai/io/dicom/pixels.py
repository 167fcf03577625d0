"""Decoding DICOM pixel data: every installed decoder, in a fixed order, with a true report.

pydicom's pixel-data plugins are tried one after another for compressed transfer syntaxes:
``pylibjpeg`` (libjpeg, OpenJPEG, RLE), ``pyjpegls`` (CharLS), pydicom's own RLE decoder, then
``gdcm`` (python-gdcm) as the fallback, then ``pillow``. When all of them fail and dcmtk is on
``PATH`` (``dcmdjpeg``, ``dcmdjpls``, ``dcmdrle``), dcmtk decompresses the file into a temporary
copy as the last resort (it decodes 12-bit JPEG Extended, which python-gdcm's wheel does not).

When nothing decodes the data, the error names the transfer syntax, each decoder that was tried
and what it said, so that the hint is true (never "install X" when X is installed).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medxai.errors import CorruptInputError, UnsupportedInputError

__all__ = ["DECODER_ORDER", "decode_stored", "decoder_report", "transfer_syntax"]

#: The order in which pydicom's decoding plugins are tried (those installed and able to decode
#: the transfer syntax); GDCM is the fallback after pylibjpeg and pyjpegls.
DECODER_ORDER = ("pylibjpeg", "pyjpegls", "pydicom", "gdcm", "pillow")

# dcmtk programs that decompress a transfer syntax family, the last resort after pydicom's plugins
_DCMTK_TOOLS = {
    "1.2.840.10008.1.2.4.50": "dcmdjpeg",
    "1.2.840.10008.1.2.4.51": "dcmdjpeg",
    "1.2.840.10008.1.2.4.57": "dcmdjpeg",
    "1.2.840.10008.1.2.4.70": "dcmdjpeg",
    "1.2.840.10008.1.2.4.80": "dcmdjpls",
    "1.2.840.10008.1.2.4.81": "dcmdjpls",
    "1.2.840.10008.1.2.5": "dcmdrle",
}


def transfer_syntax(ds: Dataset) -> Any:
    """The data set's Transfer Syntax UID (a pydicom ``UID``), or ``None`` when it has none."""
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def _ts_text(ts: Any) -> str:
    if ts is None:
        return "an unknown transfer syntax"
    name = getattr(ts, "name", "") or ""
    return f"{name} ({ts})" if name and name != str(ts) else str(ts)


def decoder_report(ts: Any) -> dict[str, str]:
    """For a transfer syntax: each known pydicom decoding plugin and whether it can be used.

    Returns ``{plugin: "available" | "missing <dependencies>"}``; empty when pydicom implements
    no decoder for the syntax at all (e.g. MPEG video).
    """
    from pydicom.pixels import get_decoder

    try:
        dec = get_decoder(ts)
    except (NotImplementedError, ValueError):
        return {}
    out = {p: "available" for p in dec.available_plugins}
    for line in dec.missing_dependencies:  # e.g. "gdcm - requires gdcm"
        name, _, deps = str(line).partition(" - ")
        out[name.strip()] = f"missing ({deps.strip() or 'dependencies'})"
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def decode_stored(
    ds: Dataset,
    path: str | Path | None = None,
    *,
    plugins: Sequence[str] = DECODER_ORDER,
    use_dcmtk: bool = True,
) -> np.ndarray:
    """Decode the stored pixel values of ``ds`` as pydicom shapes them.

    ``plugins`` are the pydicom decoding plugins to try, in order (default
    :data:`DECODER_ORDER`); ``use_dcmtk`` allows dcmtk as the last resort.

    ``(rows, cols[, samples])`` for one frame, ``(frames, rows, cols[, samples])`` for several.
    YBR colour comes back as RGB, MONOCHROME1 is *not* inverted and no LUT is applied.

    Raises:
        UnsupportedInputError: no installed decoder decodes the transfer syntax; the message names
            the syntax, the decoders tried and what each said.
        CorruptInputError: the data is shorter than the header says, or attributes the Image Pixel
            module requires are missing.
    """
    from pydicom.pixels import get_decoder

    ts = transfer_syntax(ds)
    where = path if path is not None else getattr(ds, "filename", None)
    if ts is None or not getattr(ts, "is_compressed", False):
        try:
            return ds.pixel_array
        except (AttributeError, KeyError) as exc:
            raise CorruptInputError(
                f"the Image Pixel module is incomplete ({_first_line(exc)})",
                path=where,
                hint="the file is not a complete image object; export it again from the source",
            ) from exc
        except (ValueError, TypeError, EOFError, OSError, IndexError) as exc:
            raise CorruptInputError(
                f"uncompressed pixel data does not match its header ({_first_line(exc)})",
                path=where,
                hint="the file is truncated or damaged; copy or export it again",
            ) from exc
        except (NotImplementedError, RuntimeError) as exc:
            raise UnsupportedInputError(
                f"pixel data in {_ts_text(ts)} cannot be read ({_first_line(exc)})", path=where
            ) from exc
    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError) as exc:
        raise UnsupportedInputError(
            f"pixel data is in {_ts_text(ts)}, for which no image decoder exists in pydicom, GDCM "
            "or dcmtk (video or another non-image encoding)",
            path=where,
            hint="convert the object to an image transfer syntax (e.g. frames exported as DICOM "
            "images) before giving it to medxai",
        ) from exc
    tried: list[str] = []
    available = set(decoder.available_plugins)
    for plugin in plugins:
        if plugin not in available:
            continue
        try:
            arr, _meta = decoder.as_array(ds, decoding_plugin=plugin)
            return arr
        except (AttributeError, KeyError) as exc:
            raise CorruptInputError(
                f"the Image Pixel module is incomplete ({_first_line(exc)})",
                path=where,
                hint="the file is not a complete image object; export it again",
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; we report it
            tried.append(f"{plugin}: {_first_line(exc)}")
    tool = _DCMTK_TOOLS.get(str(ts))
    exe = shutil.which(tool) if tool and use_dcmtk else None
    if exe and where is not None and Path(where).is_file():
        try:
            return _decode_with_dcmtk(exe, Path(where))
        except (OSError, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
            tried.append(f"dcmtk {tool}: {_first_line(exc)}")
    elif tool and use_dcmtk:
        tried.append(f"dcmtk {tool}: not installed")
    missing = [f"{p} {why}" for p, why in decoder_report(ts).items() if why != "available"]
    said = "; ".join(tried) or "no decoder is installed for it"
    if tried:
        hint = (
            "every installed decoder failed on this data, so it is probably damaged or uses "
            "a variant they do not support; decompress it with another toolkit (e.g. "
            "dcmtk's dcmdjpeg/dcmdjpls, gdcmconv --raw, or the PACS's own export) and give "
            "medxai the result"
        )
    elif available:
        said = f"none of {', '.join(plugins)} decodes it"
        hint = f"decoders that can: {', '.join(sorted(available))}"
    else:
        hint = "install a decoder for it: " + (", ".join(missing) or "none known")
    raise UnsupportedInputError(
        f"pixel data in {_ts_text(ts)} cannot be decoded; decoders tried: {said}",
        path=where,
        hint=hint,
    )


def _decode_with_dcmtk(exe: str, path: Path) -> np.ndarray:
    """Decompress ``path`` with a dcmtk tool into a temporary file and decode that."""
    import pydicom

    with tempfile.TemporaryDirectory(prefix="medxai-dcmtk-") as tmp:
        out = Path(tmp) / "raw.dcm"
        proc = subprocess.run(
            [exe, str(path), str(out)], capture_output=True, text=True, timeout=300, check=False
        )
        if proc.returncode != 0 or not out.is_file():
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(msg[-1] if msg else f"exit status {proc.returncode}")
        raw = pydicom.dcmread(str(out), force=True)
        return np.array(raw.pixel_array)
