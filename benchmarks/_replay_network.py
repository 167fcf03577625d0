"""A GPU stand-in on the CPU for benchmarks: the bundled photo model's network, replayed.

``record(bundle, dicoms, path)`` runs the real network once over every test-time augmentation
view of each photo, as ``medxai batch`` prepares it, and stores the logits keyed by a checksum of
the view's input. ``install(path)`` (in a fresh process, before medxai's CLI is imported) makes
``medxai.models.bundle.load_bundle`` give such a model a :class:`ReplayUNet` instead: a MONAI
``UNet`` of the same structure (so the same layer names for Grad-CAM) but 2 channels a level,
whose output is the recorded logits plus a thousandth of its own (run on the input shrunk 4x
a side). Its forward and backward passes cost about a tenth of the real network's (the
benchmark prints the figure), as a GPU's few milliseconds would on the CPU's clock, and
everything else medxai does (decoding, the views back onto the photo, their label maps, the
saliency maps and measures, the uncertainty, the objects) is unchanged: what is left is
medxai's own work, the part that writer processes take off the network's process.

A view whose input was not recorded raises (the benchmark would otherwise measure another
segmentation). Used by ``bench_writers_standin.py``; not part of medxai.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import UNet

#: channels per level of the stand-in (the real network: 16, 32, 64, 128, 256)
STANDIN_CHANNELS = 2
#: the stand-in's own pass runs on the input shrunk by this factor on each side
SHRINK = 4


def input_key(x: torch.Tensor) -> int:
    """Checksum of one view's ``(C, H, W)`` float32 input."""
    a = x.detach().float().contiguous().cpu().numpy()
    return zlib.crc32(a.tobytes())


class _Recorder(torch.nn.Module):
    """The real network, keeping each input's logits under :func:`input_key`."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        for i in range(x.shape[0]):
            self.seen[input_key(x[i])] = y[i].float().clone()
        return y


def record(bundle: Any, dicoms: list[Path], path: Path) -> int:
    """Store the real network's logits for every TTA view of each photo in ``dicoms``: each
    photo goes through ``medxai.inference.predict`` (which prepares it as ``medxai batch``
    does) with the network wrapped by a recorder; returns the count."""
    import dataclasses

    from medxai.inference import predict
    from medxai.io.readers import load_image

    recorder = _Recorder(bundle.network).eval()
    recording = dataclasses.replace(bundle, network=recorder)
    for f in dicoms:
        predict(recording, load_image(f).image, device="cpu")
    keys = list(recorder.seen)
    torch.save({"keys": torch.tensor(keys, dtype=torch.int64),
                "logits": torch.stack([recorder.seen[k] for k in keys])}, path)
    return len(keys)


def standin_network(config: dict[str, Any], recorded: Path) -> ReplayUNet | None:
    """The :class:`ReplayUNet` of ``recorded`` for a bundle's inference ``config`` (its
    ``network_def`` with 2 channels a level), or None when its network is not a 2D UNet."""
    net_def = dict(config["network_def"])
    if not str(net_def.pop("_target_")).endswith("UNet") or net_def.get("spatial_dims") != 2:
        return None
    net_def["channels"] = [STANDIN_CHANNELS] * len(net_def["channels"])
    torch.manual_seed(0)
    return ReplayUNet(recorded, **net_def).eval()


def standin_cost(bundle: Any, recorded: Path, dicoms: list[Path], reps: int = 3) -> tuple[float,
                                                                                        float]:
    """CPU ms (best of ``reps``, this thread) of one forward pass over the identity view of
    ``dicoms`` as one batch: the real network (as medxai runs it) and the stand-in."""
    import time

    from medxai.inference import network_on, prepare_input
    from medxai.io.readers import load_image

    x = torch.cat([prepare_input(bundle, load_image(f).image)[0] for f in dicoms])
    standin = standin_network(bundle.config, recorded)
    assert standin is not None, "the bundle's network is not a 2D UNet"
    out = []
    for module in (bundle.network, standin):
        with network_on(module, torch.device("cpu")) as net, torch.inference_mode():
            best = float("inf")
            for _ in range(reps):
                t = time.thread_time()
                net(x)
                best = min(best, time.thread_time() - t)
        out.append(1000 * best)
    return out[0], out[1]


class ReplayUNet(UNet):
    """A narrow ``UNet`` whose output is the recorded logits of its input (plus 1e-3 times its
    own, so that gradients reach its layers; Grad-CAM's layer then sees the shrunk input's
    activations, and its map is brought to the photo's size as usual)."""

    def __init__(self, recorded: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        data = torch.load(recorded, weights_only=True)
        self._row = {int(k): i for i, k in enumerate(data["keys"].tolist())}
        self._logits = data["logits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # its own pass on a quarter of each side: at full size the ~100 small operations of
        # even a 2-channel UNet cost a quarter of the real network's forward pass on the CPU
        small = torch.nn.functional.avg_pool2d(x, SHRINK)
        own = torch.nn.functional.interpolate(super().forward(small), size=x.shape[2:])
        rows = []
        for i in range(x.shape[0]):
            key = input_key(x[i])
            if key not in self._row:
                raise KeyError(f"the stand-in has no recorded logits for this input ({key}); "
                               "record them with the same medxai and photos")
            rows.append(self._row[key])
        return self._logits[rows].to(own.dtype) + 1e-3 * own


def install(recorded: Path) -> None:
    """Make ``load_bundle`` give 2D UNet bundles a :class:`ReplayUNet` of ``recorded``."""
    import medxai.models.bundle as mb

    real = mb.load_bundle

    def load_bundle(path: str | Path, *, verify: bool = True) -> Any:
        bundle = real(path, verify=verify)
        standin = standin_network(bundle.config, recorded)
        if standin is not None:
            bundle.network = standin
        return bundle

    mb.load_bundle = load_bundle
