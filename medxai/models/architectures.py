"""Which layer of a segmentation network the Grad-CAM family explains by default, by
architecture: knowledge of network layouts (MONAI's UNet, SegResNet, DynUNet, UNesT, FlexibleUNet,
DiNTS) that the model contract (a MONAI bundle's saliency default, ``medxai models describe``)
and :mod:`medxai.explain.layers` share. It lives with the models because the contract is made
here, below the explain layer."""

from __future__ import annotations

from torch import nn

__all__ = ["cam_layer_choice", "unet_prefix"]


def unet_prefix(net: nn.Module) -> str | None:
    """The name of the first MONAI UNet inside ``net`` ("" for ``net`` itself), if any."""
    try:
        from monai.networks.nets import UNet
    except ImportError:  # pragma: no cover - monai is a dependency
        return None
    for name, module in net.named_modules():
        body = getattr(module, "model", None) if isinstance(module, UNet) else None
        if isinstance(body, nn.Sequential) and len(body) == 3 and hasattr(body[1], "submodule"):
            return name
    return None


def _deepest_stage(net: nn.Module) -> tuple[str, str] | None:
    """``(layer, why)`` for the architectures below the module docstring's UNet: the deepest
    encoder stage (the features the decoder starts from), where the network has one."""
    name = type(net).__name__
    modules = dict(net.named_modules())
    downs = [n for n in modules if n.startswith("down_layers.") and n.count(".") == 1]
    if name == "SegResNet" and downs:
        last = f"down_layers.{len(downs) - 1}"
        return last, f"deepest encoder stage of SegResNet ({last})"
    if name == "DynUNet" and "bottleneck" in modules:
        return "bottleneck", "deepest encoder stage of DynUNet (bottleneck)"
    if name == "UNesT" and "encoder10" in modules:
        return "encoder10", "deepest encoder stage of UNesT (encoder10, on the last ViT level)"
    if name == "FlexibleUNet" and "decoder.blocks.0" in modules:
        return (
            "decoder.blocks.0",
            "first decoder block of FlexibleUNet (it reads the deepest encoder stage, whose "
            "backbone returns a list that a layer hook cannot weight)",
        )
    if name == "DiNTS":
        node_a = getattr(net, "node_a", None)
        depths = [
            d
            for d in range(len(getattr(net, "stem_up", [])))
            if node_a is None or bool(node_a[-1][d])
        ]
        # DiNTS calls its stems' forward() directly, which runs no hooks; their inner
        # Sequential (``mod``) is called normally
        if depths and f"stem_up.{max(depths)}.mod" in modules:
            layer = f"stem_up.{max(depths)}.mod"
            return (
                layer,
                f"coarsest resolution the searched DiNTS cells reach ({layer}, the first "
                "decoder stem after them)",
            )
    return None


def cam_layer_choice(net: nn.Module) -> tuple[str | None, str]:
    """``(layer, reason)``: the Grad-CAM-family layer medxai uses for ``net`` by default and why,
    or ``(None, reason)`` when it knows none (then a gradient-free method is the default).

    MONAI ``UNet``: ``model.1`` (see the module docstring). ``SegResNet``, ``DynUNet``,
    ``UNesT``, ``FlexibleUNet``, ``DiNTS``: the deepest encoder stage (the coarsest features the
    decoder starts from; Seg-Grad-CAM's choice, Vinogradova et al. 2020). Other networks: None.
    """
    prefix = unet_prefix(net)
    if prefix is not None:
        layer = f"{prefix}.model.1" if prefix else "model.1"
        return layer, f"UNet: the input of its final block ({layer}), measured best"
    deepest = _deepest_stage(net)
    if deepest is not None:
        return deepest
    return None, (
        f"medxai knows no Grad-CAM layer of {type(net).__name__}; a gradient-free method "
        "(occlusion) needs none"
    )
