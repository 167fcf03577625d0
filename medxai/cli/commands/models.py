"""``medxai models`` (list the bundled models), ``medxai models describe PATH`` and
``medxai models convert OLD NEW``."""

from __future__ import annotations

from typing import Any

import click

from medxai.cli.commands.segment import models_cmd as list_models_cmd
from medxai.cli.common import echo_json, guard

__all__ = ["models_group", "describe_cmd", "convert_cmd"]


@click.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the model cards as JSON.")
@click.pass_context
def models_group(ctx: click.Context, as_json: bool) -> None:
    """List the bundled models with their card (task, input, metrics, weights hash);
    `medxai models describe PATH` shows what medxai understood of a bundle folder;
    `medxai models convert OLD NEW` rewrites an older medxai bundle as a MONAI bundle."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_models_cmd, as_json=as_json)


def _describe(bundle: Any) -> dict[str, Any]:
    if hasattr(bundle, "describe"):
        return bundle.describe()
    c = bundle.contract
    return {
        "name": c.name,
        "version": c.version,
        "path": str(bundle.path),
        "form": c.form,
        "weights": c.weights,
        "weights_sha256": bundle.weights_sha256,
        "network": c.network,
        "parameters": sum(int(p.numel()) for p in bundle.network.parameters()),
        "input": {
            "spatial_dims": c.input.spatial_dims,
            "channels": c.input.channels,
            "channel_names": list(c.input.channel_names),
            "modalities": list(c.input.modalities),
        },
        "preprocessing": list(c.preprocessing),
        "inferer": {
            "class": c.inference.mode,
            "roi_size": list(c.inference.roi_size) if c.inference.roi_size else None,
            "overlap": c.inference.overlap,
            "sw_batch_size": c.inference.sw_batch_size,
            "tta": c.inference.tta,
        },
        "postprocessing": list(c.postprocessing),
        "labels": [lab.as_dict() for lab in c.labels],
        "replaced_by_medxai": list(c.replaced),
        "saliency_methods": list(c.saliency_methods),
    }


@models_group.command("describe")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@guard
def describe_cmd(path: str, as_json: bool) -> None:
    """What medxai understood of the bundle PATH (a folder, or a bundled model name): network
    and parameter count, inputs, preprocessing chain, inferer, postprocessing, labels, what
    medxai replaces, and which saliency methods apply."""
    from medxai.models.registry import load_model

    info = _describe(load_model(path))
    if as_json:
        echo_json(info)
        return
    inp = info["input"]
    names = f" ({', '.join(inp['channel_names'])})" if inp["channel_names"] else ""
    inf = info["inferer"]
    lines = [
        f"{info['name']} {info['version']}  [{info['form']} bundle, {info['weights']}]",
        f"  path: {info['path']}",
        f"  network: {info['network']}, {info['parameters']:,} parameters",
        f"  input: {inp['spatial_dims']}D, {inp['channels']} channel(s){names}"
        + (f", modality {'/'.join(inp['modalities'])}" if inp["modalities"] else ""),
        "  preprocessing: " + (" -> ".join(info["preprocessing"]) or "none"),
        "  inferer: " + ", ".join(f"{k} {v}" for k, v in inf.items() if v is not None),
        "  postprocessing: " + (" -> ".join(info["postprocessing"]) or "none"),
        f"  labels ({len(info['labels'])}): "
        + ", ".join(f"{lab['value']} {lab['name']}" for lab in info["labels"][:12])
        + (" ..." if len(info["labels"]) > 12 else ""),
    ]
    if info["replaced_by_medxai"]:
        lines.append("  medxai replaces: " + "; ".join(info["replaced_by_medxai"]))
    lines.append("  saliency methods: " + ", ".join(info["saliency_methods"]))
    default = info.get("saliency_default") or {}
    if default.get("reason"):
        at = f" at {default['layer']}" if default.get("layer") else ""
        lines.append(f"  saliency default: {default['method']}{at} ({default['reason']})")
    click.echo("\n".join(lines))


@models_group.command("convert")
@click.argument("old", type=click.Path(exists=True, file_okay=False))
@click.argument("new", type=click.Path())
@guard
def convert_cmd(old: str, new: str) -> None:
    """Rewrite the medxai bundle OLD (either form) as a MONAI bundle in the new folder NEW:
    configs/inference.json that plain MONAI runs (network_def, preprocessing, inferer,
    postprocessing) with medxai's settings under the key "medxai", and configs/metadata.json in
    MONAI's form. The weights are copied byte for byte (their SHA-256 is checked first and
    stays the recorded one); OLD is not changed."""
    from medxai.models.bundle import convert_bundle, load_bundle

    out = convert_bundle(old, new)
    b = load_bundle(out)
    click.echo(f"converted {b.name} {b.version}: {out} (weights SHA-256 {b.weights_sha256})")
