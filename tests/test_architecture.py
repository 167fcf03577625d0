"""One home per concern: the atomic-write helper, the CLI choices and the command list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_durable_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    from medxai.io import atomic

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else "?")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    target = tmp_path / "sub" / "weights.pt"
    with atomic.atomic_path(target, durable=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(".")] == []
    if synced[0] != "?":
        assert Path(synced[0]).name.startswith(".weights.pt.")  # the data, before the rename
        assert Path(synced[-1]) == target.parent  # then the folder holding the new entry
    synced.clear()
    with atomic.atomic_path(target) as tmp:  # not durable: no fsync
        tmp.write_bytes(b"newer")
    assert synced == [] and target.read_bytes() == b"newer"


def test_failed_durable_write_keeps_the_old_file(tmp_path):
    from medxai.io.atomic import atomic_path, write_bytes_atomic

    target = write_bytes_atomic(tmp_path / "m.json", b"old", durable=True)
    with pytest.raises(RuntimeError):
        with atomic_path(target, durable=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_writers_and_io_share_one_atomic_helper():
    from medxai.io import atomic
    from medxai.io.writers import _atomic

    assert _atomic.atomic_path is atomic.atomic_path
    assert _atomic.write_bytes_atomic is atomic.write_bytes_atomic


def test_choices_module_is_torch_free():
    code = "import sys, medxai.choices; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cli_registers_exactly_the_command_list():
    from medxai.cli.commands import COMMANDS
    from medxai.cli.main import cli

    assert sorted(cli.commands) == sorted(c.name for c in COMMANDS)
    assert len({c.name for c in COMMANDS}) == len(COMMANDS)


def test_saliency_choices_match_the_explain_registry():
    import click

    from medxai.choices import (
        EVALUATION_METHODS,
        EXPLAIN_CHOICES,
        METHOD_CHOICES,
        SALIENCY_METHODS,
    )
    from medxai.cli.commands import COMMANDS
    from medxai.explain.methods import METHODS

    assert SALIENCY_METHODS == tuple(METHODS), "update medxai/choices.py with the registry"
    assert set(EVALUATION_METHODS) <= set(METHODS)
    assert EXPLAIN_CHOICES == ("auto", *SALIENCY_METHODS, "none")
    assert METHOD_CHOICES == ("auto", *SALIENCY_METHODS)
    by_name = {c.name: c for c in COMMANDS}
    for command, option, want in (("segment", "explain", EXPLAIN_CHOICES),
                                  ("batch", "explain", EXPLAIN_CHOICES),
                                  ("listen", "explain", EXPLAIN_CHOICES),
                                  ("explain", "method", METHOD_CHOICES)):
        param = next(p for p in by_name[command].params if p.name == option)
        assert isinstance(param.type, click.Choice)
        assert tuple(param.type.choices) == want, (command, option)


#: The layers of docs/architecture.md, bottom (0) to top: a unit may import units of lower
#: layers only (foundation modules may also import each other).
LAYERS = {
    "_version": 0, "errors": 0, "choices": 0, "palette": 0, "labelmaps": 0, "overlap": 0,
    "pipeline_formats": 0,
    "io": 1, "models": 2, "samples": 2, "preprocessing": 3, "postprocess": 3, "inference": 4,
    "explain": 5, "uncertainty": 5, "outputs": 6, "pipeline": 7,
    "batch": 8, "evaluation": 8, "transforms": 8, "node": 9, "training": 9, "cli": 10,
}


def _unit_imports() -> dict[str, set[tuple[str, str]]]:
    """{unit: {(imported unit, "file:line")}} for every import of another medxai unit (also
    inside functions), read with ast (nothing is imported)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "medxai"
    out: dict[str, set[tuple[str, str]]] = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent)
        parts = list(rel.with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        parts = parts[:-1] if is_pkg else parts
        me = parts[1] if len(parts) > 1 else ""  # "" for medxai/__init__.py (lazy exports)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                    names = [".".join(base + ([node.module] if node.module else []))]
                else:
                    names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "medxai" and len(parts) > 1 and me and parts[1] != me:
                    out.setdefault(me, set()).add((parts[1], f"{rel}:{node.lineno}"))
    return out


def test_imports_only_go_down_the_layers():
    bad, unknown = [], set()
    for unit, targets in _unit_imports().items():
        for target, where in targets:
            if unit not in LAYERS or target not in LAYERS:
                unknown.add(unit if unit not in LAYERS else target)
            elif LAYERS[target] > LAYERS[unit] or (LAYERS[target] == LAYERS[unit] > 0):
                bad.append(f"{where}: {unit} imports {target}")
    assert not unknown, (f"new unit(s) {sorted(unknown)}: give them a layer in LAYERS here and "
                         "in docs/architecture.md")
    assert not bad, "imports that run back up a layer:\n" + "\n".join(sorted(bad))


def test_the_import_reader_sees_imports_inside_functions():
    graph = _unit_imports()
    # cli/commands/segment.py imports the pipeline inside the command function only
    assert "pipeline" in {t for t, _ in graph["cli"]}
    assert "training" not in {t for t, _ in graph.get("inference", set())}


def test_node_instances_are_written_through_the_atomic_helper(tmp_path, monkeypatch):
    from medxai.io import atomic
    from medxai.node.store import write_durable

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    dest = tmp_path / "studies" / "s1" / "instances" / "in_1.dcm"
    seen: list[Path] = []

    def check(path: Path) -> str | None:
        seen.append(path)
        assert path.read_bytes() == b"DICM data"  # the whole file, before it is stored
        return None

    assert write_durable(b"DICM data", dest, tmp_dir, check=check) is None
    assert dest.read_bytes() == b"DICM data"
    assert seen[0].parent == tmp_dir and not seen[0].exists()  # made in tmp/, renamed away
    assert not seen[0].name.startswith(".")  # the check scans it like a received file
    assert dest.stat().st_mode & 0o777 == 0o600  # received instances stay private
    assert len(synced) == 2  # the data before the rename, the folder after it
    assert list(tmp_dir.iterdir()) == [] and list(dest.parent.iterdir()) == [dest]


def test_node_refused_or_failed_instance_leaves_nothing(tmp_path):
    from medxai.node.store import write_durable

    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    dest = tmp_path / "instances" / "in_2.dcm"
    assert write_durable(b"junk", dest, tmp_dir, check=lambda p: "not DICOM") == "not DICOM"
    assert not dest.exists() and list(tmp_dir.iterdir()) == []
    (tmp_path / "blocked").write_text("a file where the folder should be")
    # the node answers an OSError with "out of resources": it stays an OSError
    with pytest.raises(OSError):
        write_durable(b"DICM", tmp_path / "blocked" / "in_3.dcm", tmp_dir)
    assert list(tmp_dir.iterdir()) == []


def _calls_outside(allowed: set[str], under: str = "") -> list[str]:
    """``file:line name`` of every call of os.replace, os.rename or Path.rename, shutil.move,
    tempfile.mkstemp or NamedTemporaryFile in medxai (files under ``under`` only), outside
    ``allowed``: the ways to write a file atomically by hand."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found = []
    for f in sorted((root / "medxai" / under).rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name, owner = node.func.attr, node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else ""
            if (
                (owner_name == "os" and name == "replace")
                or (owner_name == "shutil" and name == "move")
                or name in ("rename", "mkstemp", "NamedTemporaryFile")
            ):
                found.append(f"{rel}:{node.lineno} {name}")
    return found


#: The places that may rename files: the helper itself, and the result folder's one rename.
ATOMIC_RENAMERS = {"medxai/io/atomic.py", "medxai/outputs.py"}


def test_files_are_replaced_only_by_the_atomic_helper():
    calls = [c for c in _calls_outside(ATOMIC_RENAMERS) if not c.startswith("medxai/batch/")]
    assert not calls, "write through medxai.io.atomic instead:\n" + "\n".join(calls)


def test_batch_replaces_files_only_through_the_atomic_helper():
    calls = _calls_outside(ATOMIC_RENAMERS, "batch")
    assert not calls, "write through medxai.io.atomic instead:\n" + "\n".join(calls)


def test_label_colour_tables_live_in_the_palette_module():
    import ast

    root = Path(__file__).resolve().parents[1]
    tables = []
    for f in sorted((root / "medxai").rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if rel == "medxai/palette.py" or "/bundled/" in rel:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 5 and all(
                isinstance(e, ast.Tuple) and len(e.elts) == 3
                and all(isinstance(v, ast.Constant) and isinstance(v.value, int) for v in e.elts)
                for e in node.elts
            ):
                tables.append(f"{rel}:{node.lineno}")
    assert not tables, "RGB tables outside medxai/palette.py:\n" + "\n".join(tables)


def _function_sizes():
    """scripts/function_sizes.py, loaded by path (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "function_sizes.py"
    spec = importlib.util.spec_from_file_location("function_sizes", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_sizes"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "module",
    [
        "medxai/training/trainer.py",
        "medxai/batch/runner.py",
        "medxai/batch/schedule.py",
        "medxai/batch/manifest.py",
        "medxai/node/node.py",
        "medxai/node/store.py",
        "medxai/node/sender.py",
        "medxai/io/writers/dicom_seg.py",
        "medxai/io/writers/dicom_sc.py",
        "medxai/io/writers/_encode.py",
    ],
)
def test_risky_modules_have_short_shallow_functions(module):
    sizes = _function_sizes()
    root = Path(__file__).resolve().parents[1]
    over = [str(s) for s in sizes.measure_file(root / module, module) if s.over(60, 3)]
    assert not over, "split these into named steps (scripts/function_sizes.py):\n" + "\n".join(
        over
    )


def test_function_sizes_measures_length_and_depth(tmp_path):
    sizes = _function_sizes()
    src = tmp_path / "m.py"
    src.write_text(
        "def f(x):\n"  # 1
        "    for i in x:\n"  # depth 1
        "        if i:\n"  # 2
        "            with open(i) as fh:\n"  # 3
        "                try:\n"  # 4
        "                    pass\n"
        "                except OSError:\n"
        "                    pass\n"
        "    if x:\n"
        "        pass\n"
        "    elif not x:\n"  # an elif is as deep as its if
        "        pass\n"
        "    def g():\n"  # measured on its own, not as depth of f
        "        if x:\n"
        "            pass\n"
        "    return g\n"
    )
    got = {s.name: (s.lines, s.depth) for s in sizes.measure_file(src)}
    assert got == {"f": (16, 4), "f.g": (3, 1)}


def test_architecture_page_draws_the_layers_of_the_code():
    """docs/architecture.md's picture gives every unit of LAYERS its layer (the number at the
    left of the first unit of a layer; the foundation's units named in its description)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    block = text.split("```\n10  cli", 1)[1].split("```", 1)[0]
    drawn: dict[str, int] = {"cli": 10}
    layer, foundation = 10, ""
    for line in block.splitlines()[1:]:
        number, name = line[:4].strip(), line[4:20].strip()
        layer = int(number) if number else layer
        if name:
            drawn[name] = layer
        if layer == 0:
            foundation += line
    for unit, want in LAYERS.items():
        if want == 0:
            assert unit in foundation, f"{unit} is not in the foundation of the picture"
        else:
            assert drawn.get(unit) == want, f"{unit}: layer {drawn.get(unit)} drawn, {want} in code"


def test_evaluation_csv_is_replaced_whole_or_not_at_all(tmp_path):
    from medxai.evaluation.segmentation import write_csv

    path = write_csv([{"case": "a", "label": 1, "dice": 0.5}], tmp_path / "scores.csv")
    before = path.read_text()
    with pytest.raises(ValueError):  # a column the CSV does not have, after a good row
        write_csv([{"case": "b", "label": 1}, {"case": "c", "bogus": 1}], path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
