"""The CLI's commands, as the explicit list :data:`COMMANDS` that :mod:`medxai.cli.main` adds
to its group.

A command module defines a ``click.Command`` (``@click.command("name")``) and never imports
the group (so there is no import loop); a new command is added to :data:`COMMANDS` here.
"""

from __future__ import annotations

import click

from medxai.cli.commands.batch import batch_cmd
from medxai.cli.commands.channels import channels_cmd
from medxai.cli.commands.evaluate import evaluate_cmd
from medxai.cli.commands.explain import explain_cmd
from medxai.cli.commands.info import info_cmd
from medxai.cli.commands.listen import listen_cmd
from medxai.cli.commands.models import models_group
from medxai.cli.commands.segment import segment_cmd
from medxai.cli.commands.send import send_cmd
from medxai.cli.commands.train import train_cmd

__all__ = ["COMMANDS"]

#: Every ``medxai`` subcommand (``medxai --help`` lists them by name).
COMMANDS: tuple[click.Command, ...] = (
    info_cmd,
    segment_cmd,
    models_group,
    explain_cmd,
    evaluate_cmd,
    train_cmd,
    batch_cmd,
    listen_cmd,
    send_cmd,
    channels_cmd,
)
