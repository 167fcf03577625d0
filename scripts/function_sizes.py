"""Length and nesting depth of every function of a package, read with ast (nothing is imported).

    python3 scripts/function_sizes.py medxai                # offenders: over 60 lines or 3 deep
    python3 scripts/function_sizes.py medxai --all          # every function, longest first
    python3 scripts/function_sizes.py medxai/training --max-lines 40 --max-depth 2

*Length* counts the lines from ``def`` to the function's last line (docstring and comments
included, decorators not). *Depth* is the largest number of blocks (``if``, ``for``, ``while``,
``with``, ``try``, ``match``) around one statement of the body: a body with one ``for`` holding an
``if`` is 2 deep. An ``elif`` (or an ``if`` alone in an ``else``) is as deep as its ``if``; a
nested function or class is measured on its own and does not add depth to the outer function.

Exit status: 1 when there are offenders (so it can gate CI), else 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 60
MAX_DEPTH = 3

_BLOCKS = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.Match,
    *((ast.TryStar,) if hasattr(ast, "TryStar") else ()),
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


@dataclass(frozen=True)
class FunctionSize:
    """One function: where it is, its qualified name, its length in lines and its depth."""

    path: str
    line: int
    name: str
    lines: int
    depth: int

    def over(self, max_lines: int = MAX_LINES, max_depth: int = MAX_DEPTH) -> bool:
        return self.lines > max_lines or self.depth > max_depth

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.name}: {self.lines} lines, depth {self.depth}"


def _child_blocks(node: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The statement lists inside one block statement, one level down."""
    if isinstance(node, ast.Match):
        for case in node.cases:
            yield case.body
        return
    for field in ("body", "orelse", "finalbody"):
        stmts = getattr(node, field, None)
        if stmts:
            yield stmts
    for handler in getattr(node, "handlers", ()):
        yield handler.body


def _depth(stmts: Sequence[ast.stmt]) -> int:
    """The nesting depth of a statement list (0: no block in it)."""
    deepest = 0
    for node in stmts:
        if not isinstance(node, _BLOCKS):
            continue
        inner = 0
        for block in _child_blocks(node):
            if (
                isinstance(node, ast.If)
                and block is node.orelse
                and len(block) == 1
                and isinstance(block[0], ast.If)
            ):
                inner = max(inner, _depth(block) - 1)  # elif: the same level as the if
            else:
                inner = max(inner, _depth(block))
        deepest = max(deepest, 1 + inner)
    return deepest


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of every function, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{node.name}"
            yield name, node
            yield from _functions(node, f"{name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def measure_file(path: str | Path, shown_as: str | None = None) -> list[FunctionSize]:
    """Every function of one Python file."""
    path = Path(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for name, node in _functions(tree):
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        end = node.end_lineno or node.lineno
        out.append(
            FunctionSize(
                shown_as or str(path), node.lineno, name, end - node.lineno + 1, _depth(node.body)
            )
        )
    return out


def measure(root: str | Path) -> list[FunctionSize]:
    """Every function of a package folder (or of one file), in file order."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    return [size for f in files for size in measure_file(f)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="package folders or files")
    parser.add_argument("--max-lines", type=int, default=MAX_LINES)
    parser.add_argument("--max-depth", type=int, default=MAX_DEPTH)
    parser.add_argument("--all", action="store_true", help="list every function")
    args = parser.parse_args(argv)
    sizes = [s for p in args.paths for s in measure(p)]
    offenders = [s for s in sizes if s.over(args.max_lines, args.max_depth)]
    shown = sizes if args.all else offenders
    for s in sorted(shown, key=lambda s: (-s.lines, -s.depth, s.path, s.line)):
        print(s)
    print(
        f"{len(sizes)} functions; {len(offenders)} over {args.max_lines} lines or "
        f"{args.max_depth} deep ({sum(s.lines > args.max_lines for s in sizes)} long, "
        f"{sum(s.depth > args.max_depth for s in sizes)} deep)"
    )
    return 1 if offenders else 0


if __name__ == "__main__":
    sys.exit(main())
