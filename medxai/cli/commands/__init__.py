"""CLI commands; importing this package registers them on :data:`medxai.cli.main.cli`."""

from medxai.cli.commands import batch, evaluate, explain, info, listen, segment, send, train  # noqa: F401
