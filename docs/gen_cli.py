"""Generate docs/cli.md from the click commands: python docs/gen_cli.py > docs/cli.md"""

from __future__ import annotations

import click

from medxai.cli.main import cli


def render() -> str:
    opts = {"max_content_width": 100, "terminal_width": 100, "help_option_names": ["-h", "--help"]}
    ctx = click.Context(cli, info_name="medxai", **opts)
    parts = ["# medxai command-line reference", "",
             "Generated from the code by `python docs/gen_cli.py > docs/cli.md`; a test checks "
             "that this file is current.", "", "```text", cli.get_help(ctx), "```", ""]
    for name in sorted(cli.list_commands(ctx)):
        cmd = cli.get_command(ctx, name)
        sub = click.Context(cmd, info_name=name, parent=ctx, **opts)
        parts += [f"## medxai {name}", "", "```text", cmd.get_help(sub), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
