"""Borrow a user's network for an explanation and give it back exactly as it was.

:func:`frozen_model` puts every module in eval mode and turns ``requires_grad`` off on every
parameter (so no parameter gradient is computed or accumulated in ``.grad``), and restores each
module's ``training`` flag and each parameter's ``requires_grad`` on exit, whatever happens.

:func:`capture_layer` adds a forward hook on one layer that keeps its output (the activations)
and removes the hook on exit, even when the body raises. Gradients with respect to those
activations are taken with ``torch.autograd.grad`` (:meth:`LayerCapture.gradients`), not with a
module backward hook: that computes only what is asked for, never touches ``param.grad``, and is
not broken by in-place operations after the layer (which make full backward hooks fail).

Nothing here changes parameter or buffer values: eval mode stops batch-norm statistics updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from medxai.errors import ExplainError
from medxai.explain.layers import resolve_layer, resolve_layers

__all__ = ["frozen_model", "capture_layer", "capture_layers", "LayerCapture", "layer_gradients"]


@contextmanager
def frozen_model(net: nn.Module) -> Iterator[nn.Module]:
    """Run ``net`` in eval mode with parameter gradients off; restore both on exit.

    Every submodule's own ``training`` flag is restored (not only the root's), so a model with,
    say, frozen batch-norm layers in a training model comes back the same.
    """
    modes = [(m, m.training) for m in net.modules()]
    flags = [(p, p.requires_grad) for p in net.parameters()]
    try:
        net.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            if m.training != mode:  # (Module.__setattr__ is slow: 144 calls a UNet otherwise)
                m.training = mode


@dataclass
class LayerCapture:
    """What :func:`capture_layer` records.

    Attributes:
        name: the layer's name in ``net.named_modules()``.
        module: the layer.
        activations: the layer's output in the last forward pass, ``(N, C_l, *spatial_l)``.
            When the layer runs more than once in one forward pass, the last call wins.
    """

    name: str
    module: nn.Module
    activations: torch.Tensor | None = field(default=None, repr=False)

    def gradients(self, score: torch.Tensor) -> torch.Tensor:
        """Gradient of ``score.sum()`` with respect to :attr:`activations` (same shape).

        Summing per-sample scores is exact per sample in eval mode, where samples do not interact.

        Raises:
            ExplainError: no forward pass was captured, or the score does not depend on the layer.
        """
        if self.activations is None:
            raise ExplainError(
                f"layer {self.name!r} did not run in the forward pass",
                hint="choose a layer on the path from input to output",
            )
        if not self.activations.requires_grad or not score.requires_grad:
            raise ExplainError(
                f"cannot differentiate the target with respect to layer {self.name!r}",
                hint="do not call explanations inside torch.inference_mode()",
            )
        (grad,) = torch.autograd.grad(score.sum(), self.activations, allow_unused=True)
        if grad is None:
            raise ExplainError(
                f"the target does not depend on layer {self.name!r}",
                hint="choose a layer on the path to the output",
            )
        return grad


def _refuse_scripted(net: nn.Module) -> None:
    """Layer methods need forward hooks, which TorchScript modules do not run."""
    if (
        isinstance(net, torch.jit.ScriptModule)
        or getattr(net, "supports_layer_hooks", True) is False
    ):
        raise ExplainError(
            f"{type(net).__name__} is a compiled (TorchScript) network: its layers "
            "cannot be hooked, so CAM methods cannot run on it",
            hint="use a gradient or perturbation method: 'smoothgrad', 'ig' or 'occlusion'",
        )


def _keep_output(capture: LayerCapture) -> Callable[[nn.Module, tuple[object, ...], object], None]:
    """A forward hook that stores the layer's output tensor in ``capture.activations``."""

    def keep_output(mod: nn.Module, inputs: tuple[object, ...], output: object) -> None:
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise ExplainError(
                f"layer {capture.name!r} outputs {type(output).__name__}, not a tensor",
                hint="choose a convolution or a block of convolutions",
            )
        capture.activations = output

    return keep_output


@contextmanager
def capture_layers(net: nn.Module, layers: object) -> Iterator[list[LayerCapture]]:
    """Like :func:`capture_layer` for several layers at once (one forward pass records all).

    ``layers``: anything :func:`medxai.explain.layers.resolve_layers` accepts.
    """
    _refuse_scripted(net)
    captures = [LayerCapture(name=n, module=m) for n, m in resolve_layers(net, layers)]  # type: ignore[arg-type]
    with frozen_model(net):
        handles = [c.module.register_forward_hook(_keep_output(c)) for c in captures]
        try:
            yield captures
        finally:
            for h in handles:
                h.remove()
            for c in captures:
                c.activations = None


def layer_gradients(captures: list[LayerCapture], score: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of ``score.sum()`` with respect to each capture's activations, in one pass.

    Raises:
        ExplainError: as :meth:`LayerCapture.gradients`.
    """
    if len(captures) == 1:
        return [captures[0].gradients(score)]
    for c in captures:
        if c.activations is None:
            raise ExplainError(
                f"layer {c.name!r} did not run in the forward pass",
                hint="choose a layer on the path from input to output",
            )
        if not c.activations.requires_grad or not score.requires_grad:
            raise ExplainError(
                f"cannot differentiate the target with respect to layer {c.name!r}",
                hint="do not call explanations inside torch.inference_mode()",
            )
    inputs = [c.activations for c in captures if c.activations is not None]
    grads = torch.autograd.grad(score.sum(), inputs, allow_unused=True)
    for c, g in zip(captures, grads):
        if g is None:
            raise ExplainError(
                f"the target does not depend on layer {c.name!r}",
                hint="choose a layer on the path to the output",
            )
    return list(grads)


@contextmanager
def capture_layer(net: nn.Module, layer: str | nn.Module | None = None) -> Iterator[LayerCapture]:
    """Record the output of ``layer`` of ``net`` while the block runs; remove the hook after.

    Also enters :func:`frozen_model`, so ``net`` is in eval mode with parameter gradients off
    inside the block, and restored afterwards.

    Raises:
        ExplainError: the layer is unknown (see :func:`resolve_layer`) or outputs no tensor.
    """
    _refuse_scripted(net)
    _name, module = resolve_layer(net, layer)  # one layer (a group alias is refused here)
    with capture_layers(net, module) as captures:
        yield captures[0]
