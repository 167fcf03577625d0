"""Which layer of a network a CAM method looks at.

Layers are named as in ``net.named_modules()`` (e.g. ``"model.1.submodule"``).

Default for a MONAI ``UNet``
----------------------------
MONAI builds ``UNet`` recursively as ``model = Sequential(down_0, SkipConnection(sub), up_0)``:
``down_0`` (``model.0``) is the first encoder block, ``sub`` (``model.1.submodule``) is the rest of
the U (deeper encoder blocks, bottleneck, all decoder blocks but the last), ``model.1`` outputs
``cat(down_0(x), sub(down_0(x)))``, and ``up_0`` (``model.2``) is the final block that turns that
into the K logits at full resolution.

The default target layer is ``model.1``: the whole input of the final block, i.e. the last
decoder features together with the skip features they are fused with, at the resolution of the
first stride (1/2 of the input for the usual strides of 2). Why:

* it is what the final block actually decides from. The final block has a small receptive field
  (a transposed convolution and a residual unit), so its decision at a pixel depends on these
  features near that pixel, and Grad-CAM's channel-weighted sum localises that evidence;
* it is fine enough to follow a lesion boundary after upsampling; the bottleneck (1/16 of the
  input for a 5-level UNet) gives blobs a few pixels wide;
* it is not the logits: Grad-CAM at ``model.2`` only reproduces the logit map.

Measured on a small 2D UNet (channels 8-64, 3 strides) trained to Dice 0.98 on synthetic lesions
with a distractor blob, Seg-Grad-CAM share of the saliency inside the predicted mask (mean of 8
images, masks 3-13 % of the image) and deletion AUC (blur baseline, lower is better; random order
0.935): ``model.1`` 0.87 / 0.84; ``model.1.submodule`` (last decoder block alone) 0.29 / 0.81;
the 1/4-resolution decoder block and the bottleneck 0.00-0.01 / 0.97-0.99 (worse than random).

SegResNet, DynUNet, UNesT, FlexibleUNet and DiNTS (MONAI model-zoo networks) get their deepest
encoder stage, the coarsest features the decoder starts from (:func:`cam_layer_choice` says which
and why). For other networks the default is the last convolution before the final (output)
convolution, or the only convolution if there is just one; a MONAI bundle with such a network
explains with occlusion by default.

Names by role (MONAI ``UNet``)
------------------------------
:func:`unet_layer_aliases` names a UNet's blocks by their place in the U, and every function here
accepts those names: ``encoder.L`` (the down block of level ``L``, ``encoder.0`` at 1/2 of the
input), ``bottleneck`` (the bottom block, Seg-Grad-CAM's layer in Vinogradova et al. 2020),
``skip.L`` (level ``L``'s skip connection output, the concatenation of the encoder features with
the decoder's; ``skip.0`` is ``model.1``, the default above), ``decoder.L`` (level ``L``'s up block;
``decoder.0`` outputs the logits). Groups for layer-aggregating CAMs (LayerCAM): ``encoder`` (all
encoder levels), ``decoder`` (all up blocks but the final one). Several layers may be given as a
list or a comma-separated string (:func:`resolve_layers`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

from medxai.errors import ExplainError
from medxai.models.architectures import cam_layer_choice, unet_prefix

__all__ = [
    "list_target_layers",
    "default_target_layer",
    "resolve_layer",
    "resolve_layers",
    "unet_layer_aliases",
    "cam_layer_choice",
]

_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, _CONV_TYPES)


def list_target_layers(net: nn.Module) -> list[str]:
    """Names of the modules of ``net`` that output feature maps usable as CAM targets.

    A module qualifies when it is a convolution (``ConvNd`` or ``ConvTransposeNd``) or a block that
    contains one (MONAI ``Convolution``, ``ResidualUnit``, ``SkipConnection``, ``Sequential``...).
    The order is that of ``net.named_modules()`` (input to output, roughly); the root is left out.
    """
    names = []
    for name, module in net.named_modules():
        if not name:
            continue
        if _is_conv(module) or any(_is_conv(m) for m in module.modules()):
            names.append(name)
    return names


def unet_layer_aliases(net: nn.Module) -> dict[str, str]:
    """Role names of a MONAI UNet's blocks (see the module docstring) -> module names.

    Empty for a network that contains no MONAI ``UNet``. Group names (``encoder``, ``decoder``)
    map to comma-separated module names.
    """
    prefix = unet_prefix(net)
    if prefix is None:
        return {}
    modules = dict(net.named_modules())
    cur = f"{prefix}.model" if prefix else "model"
    aliases: dict[str, str] = {}
    level = 0
    while True:
        block = modules[cur]
        if isinstance(block, nn.Sequential) and len(block) == 3 and hasattr(block[1], "submodule"):
            aliases[f"encoder.{level}"] = f"{cur}.0"
            aliases[f"skip.{level}"] = f"{cur}.1"
            aliases[f"decoder.{level}"] = f"{cur}.2"
            cur = f"{cur}.1.submodule"
            level += 1
        else:
            aliases["bottleneck"] = cur
            break
    aliases["encoder"] = ",".join(aliases[f"encoder.{i}"] for i in range(level))
    aliases["decoder"] = (
        ",".join(aliases[f"decoder.{i}"] for i in range(1, level)) or aliases["decoder.0"]
    )
    return aliases


def default_target_layer(net: nn.Module) -> str:
    """The layer name CAM methods use when none is given (see the module docstring for why, and
    :func:`cam_layer_choice` for the networks that are not UNets).

    Raises:
        ExplainError: ``net`` has no convolution at all.
    """
    chosen, _ = cam_layer_choice(net)
    if chosen is not None:
        return chosen
    convs = [name for name, m in net.named_modules() if name and _is_conv(m)]
    if not convs:
        raise ExplainError(
            f"{type(net).__name__} has no convolution layer to use as CAM target",
            hint="name a layer explicitly, or use method 'occlusion' or 'ig'",
        )
    return convs[-2] if len(convs) >= 2 else convs[-1]


def resolve_layer(net: nn.Module, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
    """Find the target layer of ``net``.

    Args:
        net: the network.
        layer: a name from ``net.named_modules()``, a submodule of ``net``, or ``None`` for
            :func:`default_target_layer`.

    Returns:
        ``(name, module)``.

    Raises:
        ExplainError: the name is not a module of ``net`` (the message lists the closest names
            first, then the valid target layers), or the module is not part of ``net``.
    """
    modules = dict(net.named_modules())
    if layer is None:
        layer = default_target_layer(net)
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise ExplainError(
            f"the given {type(layer).__name__} module is not part of {type(net).__name__}"
        )
    if not isinstance(layer, str):
        raise ExplainError(f"layer must be a name or a module, got {type(layer).__name__}")
    if layer in modules and layer:
        return layer, modules[layer]
    aliases = unet_layer_aliases(net)
    if layer in aliases and "," not in aliases[layer]:
        return aliases[layer], modules[aliases[layer]]
    valid = [a for a, v in aliases.items() if "," not in v] + list_target_layers(net)
    close = difflib.get_close_matches(layer, valid, n=5, cutoff=0.0)
    rest = [name for name in valid if name not in close]
    raise ExplainError(
        f"{type(net).__name__} has no layer named {layer!r}; closest: {', '.join(close) or '-'}",
        hint=f"valid layers: {', '.join(close + rest)}",
    )


def resolve_layers(
    net: nn.Module, layer: str | nn.Module | Sequence[str | nn.Module] | None
) -> list[tuple[str, nn.Module]]:
    """One or more target layers: a name/alias/module, a group alias (``encoder``, ``decoder``),
    names separated by commas, or a list of any of these. Duplicates are dropped, order kept.

    Raises:
        ExplainError: an unknown name (see :func:`resolve_layer`) or an empty list.
    """
    if layer is None or isinstance(layer, nn.Module):
        return [resolve_layer(net, layer)]
    items: list[str | nn.Module] = []
    aliases = unet_layer_aliases(net)
    for item in [layer] if isinstance(layer, str) else list(layer):
        if isinstance(item, str):
            for part in item.split(","):
                part = part.strip()
                if part:
                    items.extend(p for p in aliases.get(part, part).split(","))
        else:
            items.append(item)
    if not items:
        raise ExplainError(f"no layer given in {layer!r}", hint="name at least one layer")
    out: list[tuple[str, nn.Module]] = []
    for item in items:
        name, module = resolve_layer(net, item)
        if all(name != n for n, _ in out):
            out.append((name, module))
    return out
