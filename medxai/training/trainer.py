"""Train a MONAI U-Net with DiceCE loss into a medxai model bundle.

2D picture data (e.g. ISIC dermoscopy) trains in *whole-image* mode: every picture is resized once
to ``spatial_size`` and cached in memory, then augmented on the fly (flips, 90-degree turns,
rotation, scale, colour jitter). 3D volume data trains on random patches of ``roi_size`` (half of
them centred on foreground) after resampling to ``spacing``, and is validated with sliding-window
inference, as it will be used.

The output folder is a bundle (see :mod:`medxai.models.bundle`) holding the best epoch by mean
validation Dice, plus ``training/``: ``checkpoint_last.pt`` (for ``resume``), ``metrics.csv`` (one
row per epoch) and ``train_config.json``.

Stochastic weight averaging (SWA; Izmailov et al. 2018) is optional: with ``swa_epochs`` > 0 the
learning rate anneals to ``swa_lr`` and stays there for the last ``swa_epochs`` epochs, and the
weights at the end of each of those epochs are averaged (``torch.optim.swa_utils``). The batch-norm
statistics of the average are recomputed on training data before it is validated, and the average
competes with the plain network for the best checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from medxai._version import __version__
from medxai.choices import AUGMENTATIONS
from medxai.errors import InputError, MedxaiError
from medxai.inference import autocast_context, resolve_device
from medxai.io.atomic import atomic_path
from medxai.io.datasets import (
    Pair,
    dataset_json_validation,
    find_pairs,
    is_2d_dataset,
    label_values,
)
from medxai.models.bundle import ModelBundle, network_from_config, save_bundle
from medxai.models.networks import default_unet_args
from medxai.training.validation import dice_per_case

__all__ = ["TrainConfig", "TrainResult", "train"]

LogFn = Callable[[str], None]


@dataclass
class TrainConfig:
    """Everything ``medxai train`` needs; every field has a CLI option of the same name."""

    data: str
    output: str
    val_data: str | None = None
    val_fraction: float = 0.2
    spatial_size: Sequence[int] | None = None
    roi_size: Sequence[int] | None = None
    spacing: Sequence[float] | None = None
    intensity: dict[str, Any] | None = None
    width: int = 16
    depth: int = 5
    num_res_units: int = 2
    dropout: float = 0.1
    norm: str = "batch"
    epochs: int = 50
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    time_budget_min: float | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    name: str = "custom-unet"
    version: str = "0.1.0"
    description: str = ""
    label_names: Sequence[str] | None = None
    modalities: Sequence[str] = field(default_factory=list)
    samples_per_volume: int = 4
    init_from: str | None = None
    swa_epochs: int = 0
    swa_lr: float | None = None
    augment: str = "photo"
    flip_axes: Sequence[int] | None = None
    command: str = ""


@dataclass
class TrainResult:
    """What a call of :func:`train` achieved."""

    bundle: Path
    epochs_done: int
    best_epoch: int
    best_metric: float
    finished: bool
    seconds: float
    history: list[dict[str, float]]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def _load_2d(pairs: Sequence[Pair], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and resize every pair once: images ``(N, C, *size)`` float, labels uint8."""
    from medxai.io.photo import read_photo_array
    from medxai.preprocessing.spatial import resize_image, resize_label

    images, labels = [], []
    for pair in pairs:
        img, _ = read_photo_array(pair.image)
        lab, _ = read_photo_array(pair.label)
        if img.shape[1:] != lab.shape[1:]:
            raise InputError(f"image is {img.shape[1:]} but its mask {pair.label.name} is "
                             f"{lab.shape[1:]}", path=pair.image)
        lab_t = torch.from_numpy(label_values(lab[:1]))
        images.append(resize_image(torch.from_numpy(img), size).to(torch.float16))
        labels.append(resize_label(lab_t, size, num_classes=int(lab_t.max()) + 1 or 2))
    return torch.stack(images), torch.stack(labels)


# 2D augmentation families (medxai.choices.AUGMENTATIONS): ``photo`` for pictures with no up
# (dermoscopy: any rotation, flips, colour jitter); ``radiograph`` for upright projection X-rays
# (small rotations, scale and shift, brightness/contrast/gamma; no flips or turns, the anatomy
# has an up and a side).

def _augment_2d(seed: int, kind: str = "photo") -> Any:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandRotate90d,
    )

    from medxai.preprocessing.intensity import RandColorJitterd

    keys = ("image", "label")
    if kind == "radiograph":
        aug = Compose([
            RandAffined(keys, prob=0.8, rotate_range=(math.radians(10),),
                        scale_range=(0.15, 0.15), translate_range=(16, 16),
                        mode=("bilinear", "nearest"), padding_mode="zeros"),
            RandColorJitterd("image", prob=0.8, brightness=0.25, contrast=0.3, saturation=0.0,
                             hue=0.0),
            RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.5)),
        ])
        aug.set_random_state(seed)
        return aug
    if kind != "photo":
        raise MedxaiError(f"unknown augmentation {kind!r}", hint=f"use one of {AUGMENTATIONS}")
    aug = Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys, prob=0.5),
        RandAffined(keys, prob=0.7, rotate_range=(math.pi,), scale_range=(0.2, 0.2),
                    translate_range=(8, 8), mode=("bilinear", "nearest"),
                    padding_mode="reflection"),
        RandColorJitterd("image", prob=0.8, brightness=0.2, contrast=0.2, saturation=0.2,
                         hue=0.03),
    ])
    aug.set_random_state(seed)
    return aug


# ---------------------------------------------------------------------------------------------
# config of the bundle being trained
# ---------------------------------------------------------------------------------------------

def _default_labels(num_classes: int, names: Sequence[str] | None) -> list[dict[str, Any]]:
    palette = [[0, 0, 0], [255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0],
               [200, 0, 200], [0, 200, 200], [255, 128, 0]]
    names = list(names or [])
    out = []
    for v in range(num_classes):
        name = "background" if v == 0 else (names[v - 1] if v - 1 < len(names) else f"label_{v}")
        out.append({"value": v, "name": name, "color": palette[v % len(palette)]})
    return out


def _bundle_config(cfg: TrainConfig, is2d: bool, in_channels: int, num_classes: int,
                   intensity: dict[str, Any]) -> dict[str, Any]:
    net_args = default_unet_args(2 if is2d else 3, in_channels, num_classes, width=cfg.width,
                                 depth=cfg.depth, num_res_units=cfg.num_res_units,
                                 dropout=cfg.dropout, norm=cfg.norm)
    pre: dict[str, Any] = {"intensity": intensity}
    if is2d:
        pre["spatial_size"] = list(cfg.spatial_size)
        inference = {"mode": "whole_image", "tta": "flips"}
    else:
        if cfg.spacing:
            pre["spacing"] = [float(s) for s in cfg.spacing]
        inference = {"mode": "sliding_window", "roi_size": list(cfg.roi_size), "overlap": 0.25,
                     "sw_batch_size": 4, "blend_mode": "gaussian"}
    return {
        "network_def": {"_target_": "monai.networks.nets.UNet", **net_args},
        "input": {"spatial_dims": 2 if is2d else 3, "channels": in_channels,
                  "modalities": list(cfg.modalities)},
        "preprocessing": pre,
        "inference": inference,
        "labels": _default_labels(num_classes, cfg.label_names),
    }


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def _lr_lambda(warmup: int, epochs: int, swa_epochs: int = 0,
               floor: float = 0.0) -> Callable[[int], float]:
    """Learning-rate factor per epoch: linear warm-up, cosine down to ``floor``, then ``floor``
    for the last ``swa_epochs`` epochs (the SWA phase)."""
    main = epochs - swa_epochs

    def f(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        if epoch >= main:
            return floor
        t = (epoch - warmup) / max(1, main - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _swa_lr(cfg: TrainConfig) -> float:
    return cfg.swa_lr if cfg.swa_lr is not None else cfg.lr / 4


def _write_metrics_row(path: Path, row: dict[str, float]) -> None:
    """Append ``row``; a file started by an older run keeps its columns (extra keys dropped)."""
    fields = list(row)
    if path.exists():
        with open(path, newline="") as fh:
            fields = next(csv.reader(fh), None) or fields
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def train(cfg: TrainConfig, log: LogFn | None = None) -> TrainResult:
    """Train (or resume training) a bundle as ``cfg`` says. Seeds torch, numpy and random.

    Args:
        cfg: the training configuration.
        log: called with one line of progress text per epoch (the CLI prints it).

    Returns:
        a :class:`TrainResult`; ``finished`` is False when the time budget stopped the run
        early (run again with ``resume=True`` to go on).
    """
    from monai.utils import set_determinism

    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    if cfg.swa_epochs and not 0 < cfg.swa_epochs <= cfg.epochs - max(cfg.warmup_epochs, 1):
        raise MedxaiError(f"--swa-epochs {cfg.swa_epochs} does not fit --epochs {cfg.epochs} "
                          f"after {cfg.warmup_epochs} warm-up epoch(s)",
                          hint="the SWA epochs follow the warm-up (and at least one other "
                               "epoch), e.g. --epochs 30 --warmup-epochs 1 --swa-epochs 20")
    out = Path(cfg.output)
    tdir = out / "training"
    tdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = tdir / "checkpoint_last.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise MedxaiError("holds a training run already", path=out,
                          hint="pass --resume to continue it, or choose another output folder")
    set_determinism(cfg.seed)
    device = resolve_device(cfg.device)

    pairs = find_pairs(cfg.data)
    listed_val = [] if cfg.val_data else dataset_json_validation(cfg.data)
    if cfg.val_data:
        val_pairs = find_pairs(cfg.val_data)
    elif listed_val:
        say(f"validating on the {len(listed_val)} cases of dataset.json's 'validation' list")
        val_pairs = listed_val
    else:
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(pairs))
        n_val = max(1, int(round(len(pairs) * cfg.val_fraction)))
        val_pairs = [pairs[i] for i in sorted(order[:n_val])]
        pairs = [pairs[i] for i in sorted(order[n_val:])] or val_pairs
    is2d = is_2d_dataset(pairs)
    if is2d:
        cfg.spatial_size = list(cfg.spatial_size or (192, 192))
        say(f"caching {len(pairs)} training and {len(val_pairs)} validation pictures at "
            f"{tuple(cfg.spatial_size)}")
        tr_img, tr_lab = _load_2d(pairs, cfg.spatial_size)
        va_img, va_lab = _load_2d(val_pairs, cfg.spatial_size)
        in_channels = int(tr_img.shape[1])
        num_classes = int(max(tr_lab.max(), va_lab.max())) + 1
        intensity = cfg.intensity or {"kind": "scale", "a_min": 0.0, "a_max": 255.0}
        data3d = None
    else:
        from medxai.training.volumes import VolumeData

        cfg.roi_size = list(cfg.roi_size or (96, 96, 96))
        data3d = VolumeData(pairs, val_pairs, cfg, say)
        in_channels, num_classes = data3d.in_channels, data3d.num_classes
        intensity = data3d.intensity
    num_classes = max(num_classes, 2)
    config = _bundle_config(cfg, is2d, in_channels, num_classes, intensity)
    (tdir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")

    from medxai.preprocessing.intensity import ScaleIntensityFromBundle

    scaler_int = ScaleIntensityFromBundle(intensity)
    net = network_from_config(config)
    init_sha = None  # SHA-256 of the --init-from weights, kept in the checkpoint for resumes
    if cfg.init_from and not (cfg.resume and ckpt_path.exists()):
        init_sha = _init_weights(net, cfg.init_from, say)
    net = net.to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(
        cfg.warmup_epochs, cfg.epochs, cfg.swa_epochs,
        _swa_lr(cfg) / cfg.lr if cfg.swa_epochs else 0.0))
    swa_net = torch.optim.swa_utils.AveragedModel(net) if cfg.swa_epochs else None
    use_amp = device.type == "cuda"
    grad_scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best_metric, best_epoch = 0, -1.0, -1
    history: list[dict[str, float]] = []
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        grad_scaler.load_state_dict(ck["grad_scaler"])
        if swa_net is not None and "swa_model" in ck:
            swa_net.load_state_dict(ck["swa_model"])
        start_epoch, best_metric, best_epoch = ck["epoch"], ck["best_metric"], ck["best_epoch"]
        init_sha = ck.get("init_sha256")
        say(f"resuming after epoch {start_epoch} (best Dice {best_metric:.4f} at {best_epoch})")

    def validate(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            if data3d is not None:
                return data3d.validate(model, device)
            dices = []
            for i in range(0, len(va_img), 32):
                x = torch.stack([scaler_int(v.float()) for v in va_img[i:i + 32]]).to(device)
                with autocast_context(device):
                    pred = model(x).argmax(1, keepdim=True).cpu()
                dices.append(dice_per_case(pred, va_lab[i:i + 32].long(), num_classes))
            return float(torch.cat(dices).mean())

    def bn_batches(epoch: int) -> Iterator[torch.Tensor]:
        """Augmented training inputs (up to 512 cases, drawn with their own seeds) to recompute
        the average's batch norm; yielded batch by batch so 3D patches are not all held at once.

        The pass runs the network in train mode, so its dropout draws from the global torch RNG:
        a run with SWA trains the plain network on different dropout masks than one without."""
        n = 0
        if data3d is not None:
            for x, _y in data3d.train_batches(epoch + 1_000_003, cfg.batch_size):
                yield x
                n += len(x)
                if n >= 512:
                    return
            return
        aug = _augment_2d(cfg.seed * 7919 + epoch + 1_000_003, cfg.augment)
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 1)
        idx = torch.randperm(len(tr_img), generator=g)[:512].tolist()
        for i in range(0, len(idx), 32):
            yield torch.stack([_plain(aug({"image": scaler_int(tr_img[j].float()),
                                           "label": tr_lab[j]})["image"])
                               for j in idx[i:i + 32]])

    budget = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    last_epoch_s = 0.0
    epoch = start_epoch
    finished = True
    for epoch in range(start_epoch, cfg.epochs):
        elapsed = time.perf_counter() - t_start
        if budget is not None and elapsed + last_epoch_s * 1.1 > budget:
            finished = False
            say(f"time budget of {cfg.time_budget_min} min reached after epoch {epoch}; "
                f"resume with --resume")
            break
        t0 = time.perf_counter()
        lr_used = opt.param_groups[0]["lr"]
        net.train()
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        losses = []
        if is2d:
            aug = _augment_2d(cfg.seed * 7919 + epoch, cfg.augment)
            order = torch.randperm(len(tr_img), generator=g)
            batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            batches = [b for b in batches if len(b) > 1]  # batch norm needs more than one
            for idx in batches:
                # normalise first: the colour jitter works on [0, 1] intensities
                items = [aug({"image": scaler_int(tr_img[i].float()), "label": tr_lab[i]})
                         for i in idx.tolist()]
                x = torch.stack([_plain(it["image"]) for it in items])
                y = torch.stack([_plain(it["label"]) for it in items]).long()
                losses.append(_train_step(net, opt, loss_fn, grad_scaler, x, y, device, use_amp))
        else:
            for x, y in data3d.train_batches(epoch, cfg.batch_size):
                losses.append(_train_step(net, opt, loss_fn, grad_scaler, x, y, device, use_amp))
        sched.step()
        val_dice = validate(net)
        val_dice_swa = float("nan")
        best_net = net
        if swa_net is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            swa_net.update_parameters(net)
            torch.optim.swa_utils.update_bn(bn_batches(epoch), swa_net, device=device)
            val_dice_swa = validate(swa_net.module)
            if val_dice_swa >= val_dice:
                best_net = swa_net.module
        epoch_s = time.perf_counter() - t0
        last_epoch_s = epoch_s
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
               "lr": lr_used, "seconds": round(epoch_s, 2)}
        if swa_net is not None:
            row["val_dice_swa"] = val_dice_swa
        history.append(row)
        _write_metrics_row(tdir / "metrics.csv", row)
        epoch_best = val_dice if best_net is net else val_dice_swa
        improved = epoch_best > best_metric
        if improved:
            best_metric, best_epoch = epoch_best, epoch + 1
            swa_info = ({"epochs_averaged": int(swa_net.n_averaged), "lr": _swa_lr(cfg)}
                        if best_net is not net else None)
            _save_best(best_net, config, cfg, best_metric, best_epoch, len(pairs),
                       len(val_pairs), device, time.perf_counter() - t_start, swa_info, init_sha)
        state = {"epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "grad_scaler": grad_scaler.state_dict(),
                 "best_metric": best_metric, "best_epoch": best_epoch, "init_sha256": init_sha}
        if swa_net is not None:
            state["swa_model"] = swa_net.state_dict()
        with atomic_path(ckpt_path, durable=True) as tmp:
            torch.save(state, tmp)
        swa_text = f" SWA {val_dice_swa:.4f}" if not math.isnan(val_dice_swa) else ""
        say(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} val Dice {val_dice:.4f}"
            f"{swa_text}{' (best)' if improved else ''} {epoch_s:.0f}s")
    else:
        epoch = cfg.epochs
    done = epoch if not finished else cfg.epochs
    return TrainResult(bundle=out, epochs_done=done, best_epoch=best_epoch,
                       best_metric=best_metric, finished=finished,
                       seconds=time.perf_counter() - t_start, history=history)


def _init_weights(net: torch.nn.Module, bundle_path: str, say: LogFn) -> str | None:
    """Start from the weights of an existing bundle (fine-tuning); the networks must match.
    Returns the SHA-256 of those weights."""
    from medxai.models.bundle import load_bundle

    src = load_bundle(bundle_path)
    try:
        net.load_state_dict(src.network.state_dict())
    except RuntimeError as exc:
        raise MedxaiError(f"cannot start from {bundle_path}: its network differs ({exc})",
                          path=bundle_path, hint="use the same --width/--depth/--res-units") from exc
    say(f"initialised from {src.name} {src.version} ({bundle_path})")
    return src.weights_sha256


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (MONAI's MetaTensor adds per-op overhead the training loop does not need)."""
    from monai.data import MetaTensor

    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: DiceCELoss,
                grad_scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor,
                device: torch.device, use_amp: bool) -> float:
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, enabled=use_amp):
        loss = loss_fn(net(x), y)
    grad_scaler.scale(loss).backward()
    grad_scaler.step(opt)
    grad_scaler.update()
    return float(loss.detach())


def _save_best(net: torch.nn.Module, config: dict[str, Any], cfg: TrainConfig, metric: float,
               epoch: int, n_train: int, n_val: int, device: torch.device, seconds: float,
               swa: dict[str, Any] | None = None, init_sha: str | None = None) -> None:
    import monai

    metadata = {
        "schema": "medxai-bundle/1",
        "name": cfg.name,
        "version": cfg.version,
        "description": cfg.description or f"MONAI UNet trained with medxai on {cfg.data}",
        "task": "segmentation",
        "created_by": f"medxai {__version__}",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "training": {
            "data": str(cfg.data),
            "val_data": str(cfg.val_data) if cfg.val_data else f"{cfg.val_fraction:.0%} split",
            "n_train": n_train,
            "n_val": n_val,
            "epochs_planned": cfg.epochs,
            "best_epoch": epoch,
            "seconds_to_best": round(seconds, 1),
            "device": str(device),
            "hardware": f"{platform.machine()} {os.cpu_count()} CPU(s)"
                        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
            "seed": cfg.seed,
            "initialised_from": cfg.init_from,
            "initialised_from_sha256": init_sha,
            "command": cfg.command,
            "loss": "DiceCELoss(softmax, include_background=False)",
            "optimizer": f"AdamW(lr={cfg.lr}, weight_decay={cfg.weight_decay}), warmup "
                         f"{cfg.warmup_epochs} epochs then cosine"
                         + (f" to {_swa_lr(cfg)}, constant for the last {cfg.swa_epochs} epochs "
                            f"(SWA)" if cfg.swa_epochs else ""),
            "weight_averaging": swa,
        },
        "metrics": {"val_mean_dice_train_resolution": round(metric, 4)},
    }
    was_training = net.training
    bundle = ModelBundle(config=config, metadata=metadata, network=net)
    save_bundle(bundle, cfg.output)
    net.train(was_training)
