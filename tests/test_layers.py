"""The package's stages: no module imports a stage above its own (imports inside functions and
under ``TYPE_CHECKING`` count too), and every module belongs to a stage.

Lowest first: base, tables, prompts, engines, scoring, run, evaluate, report, nightly; datasets
sits beside engines but may import only base, tables and prompts (the domain words), and only the
top (dev, bench, cli) may import datasets. dev, bench and cli may import anything; nothing below
them imports dev.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "itdr_batch"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE

# Stage name -> the modules in it (each with its submodules; the package's own __init__ is base).
STAGES: dict[str, tuple[str, ...]] = {
    "base": (
        "itdr_batch",
        "itdr_batch.tasks",
        "itdr_batch.status",
        "itdr_batch.errors",
        "itdr_batch.hashing",
        "itdr_batch.core_args",
        "itdr_batch._core",
    ),
    "tables": ("itdr_batch.tables",),
    "prompts": ("itdr_batch.prompts",),
    "datasets": ("itdr_batch.datasets",),
    "engines": ("itdr_batch.engines",),
    "scoring": ("itdr_batch.scoring",),
    "run": ("itdr_batch.run",),
    "evaluate": (
        "itdr_batch.evaluate",
        "itdr_batch.position_bias",
        "itdr_batch.intervals",
        "itdr_batch.reliability",
    ),
    "report": ("itdr_batch.report",),
    "nightly": ("itdr_batch.nightly",),
    "dev": ("itdr_batch.dev",),
    "bench": ("itdr_batch.bench",),
    "cli": ("itdr_batch.cli",),
}
# Stage name -> the stages it may import, its own included.
ORDER = ("base", "tables", "prompts", "engines", "scoring", "run", "evaluate", "report", "nightly")
TOP = ("dev", "bench", "cli")
ALLOWED: dict[str, frozenset[str]] = {
    **{stage: frozenset(ORDER[: i + 1]) for i, stage in enumerate(ORDER)},
    "datasets": frozenset({"base", "tables", "prompts", "datasets"}),
    **{stage: frozenset(STAGES) for stage in TOP},
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package, from its sources (and stubs, for the compiled _core)."""
    paths = sorted(SOURCE.rglob("*.py")) + sorted(SOURCE.rglob("*.pyi"))
    return {module_name(path): path for path in paths}


def stage_of(module: str) -> str | None:
    """The stage whose entry is the longest prefix of ``module``; the bare package is exact."""
    best: tuple[int, str] | None = None
    for stage, entries in STAGES.items():
        for entry in entries:
            inside = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if inside and (best is None or len(entry) > best[0]):
                best = (len(entry), stage)
    return best[1] if best else None


def imports(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    """The package modules ``module`` imports, wherever the import statement stands."""
    is_package = path.stem == "__init__"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg.
                sub = f"{base}.{alias.name}"
                yield Import(module, sub if sub in known else base, node.lineno)


def violations() -> list[str]:
    modules = package_modules()
    found: list[str] = []
    for module, path in modules.items():
        own = stage_of(module)
        if path.suffix == ".pyi" or own is None:  # stubs import nothing; unplaced: the next test
            continue
        for imp in imports(module, path, set(modules)):
            theirs = stage_of(imp.imported)
            if theirs is None:
                why = "in no stage" if imp.imported in modules else "no such module"
                found.append(
                    f"{imp.importer} (stage {own}) imports {imp.imported} (stage: none), "
                    f"line {imp.line}: {why}"
                )
            elif theirs not in ALLOWED[own]:
                may = ", ".join(s for s in STAGES if s in ALLOWED[own])
                found.append(
                    f"{imp.importer} (stage {own}) imports {imp.imported} (stage {theirs}), "
                    f"line {imp.line}: stage {own} may import only {may}"
                )
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def test_no_module_imports_a_higher_stage() -> None:
    found = violations()
    assert not found, "layering violations:\n" + "\n".join(found)


def test_every_module_is_in_a_stage_and_every_stage_entry_exists() -> None:
    modules = package_modules()
    unplaced = [m for m in modules if stage_of(m) is None]
    assert not unplaced, f"modules in no stage (add them to STAGES in {__file__}): {unplaced}"
    stale = [e for entries in STAGES.values() for e in entries if e not in modules]
    assert not stale, f"STAGES names modules that do not exist: {stale}"
    assert set(ALLOWED) == set(STAGES)
