"""The line between serving and offline code, checked statically.

Serving code (`serve`, `worker`, `denoise`, `token`, the library face) must never import
training, evaluation, corpus or bench code, nor the packages only those need. The walk reads
every module's source with `ast` and follows every import, function-level ones included (the CLI
imports its commands lazily), without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("sfu", "denoiser")
SERVING = [
    "sfu.commands.serve", "sfu.commands.token", "sfu.app", "sfu.media.denoised_track",
    "denoiser.commands.worker", "denoiser.commands.denoise", "denoiser",
]
OFFLINE = ("denoiser.corpus", "denoiser.eval", "denoiser.training", "denoiser.bench",
           "sfu.bench")
OFFLINE_ONLY_PACKAGES = ("pesq", "pystoi", "speechmos", "onnxruntime", "onnx", "pyrnnoise",
                         "df", "matplotlib", "playwright", "pytest")


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `path` imports: `import a.b`, `from a import b` (b a module or a name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def static_import_closure(roots: list[str]) -> tuple[set[str], set[str]]:
    """(first-party modules reached, top-level third-party packages reached) from `roots`."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            continue  # a name imported from a module, not a module
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo.extend(parents)  # importing a.b.c runs a/__init__ and a/b/__init__ too
        for imported in imports_of(name, path):
            top = imported.partition(".")[0]
            if top in FIRST_PARTY:
                todo.append(imported)
            elif top:
                external.add(top)
    return seen, external


def test_serving_never_imports_offline_code() -> None:
    reached, _ = static_import_closure(SERVING)
    assert "sfu.signalling.whip" in reached and "denoiser.engine.local" in reached  # the walk works
    leaks = sorted(m for m in reached if m.startswith(OFFLINE))
    assert not leaks, f"serving code reaches offline modules: {leaks}"


def test_serving_never_imports_offline_only_packages() -> None:
    _, external = static_import_closure(SERVING)
    assert "aiortc" in external and "torch" in external  # the walk sees third-party imports
    leaks = sorted(external & set(OFFLINE_ONLY_PACKAGES))
    assert not leaks, f"serving code imports packages only offline code needs: {leaks}"


def test_denoiser_never_imports_sfu() -> None:
    """The engine side is a library of its own: `sfu` depends on `denoiser`, never back."""
    reached, _ = static_import_closure(
        [m for m in _all_modules("denoiser")])
    assert not sorted(m for m in reached if m.split(".")[0] == "sfu")


def test_the_walk_catches_a_function_level_import(tmp_path: Path) -> None:
    """A deliberately leaking module is caught (the check can fail)."""
    source = "def f():\n    from denoiser.eval.harness import evaluate\n"
    path = tmp_path / "leak.py"
    path.write_text(source)
    assert "denoiser.eval.harness" in imports_of("leak", path)


def _all_modules(package: str) -> list[str]:
    names = []
    for path in (ROOT / package).rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names
