"""No import runs back up the layers of the package.

The package is a stack: file primitives at the bottom, then configs, the run-folder contracts, the
stages in the order their outputs feed each other, and the command line on top. A module may
import from its own layer or any layer below it, never from one above, so a low-level module never
drags a whole stage into whatever imports it and the stages cannot grow cycles. The graph is read
from the source with ``ast`` (module-level AND function-level imports: the package imports lazily
inside functions, and a lazy import up the stack is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import segsynth

PACKAGE_DIR = Path(segsynth.__file__).parent

#: The layers, bottom first. A module belongs to the layer of its longest matching prefix. The
#: package root is at the bottom: importing any submodule imports it first, and it imports nothing
#: but :mod:`segsynth.lazy` and :mod:`segsynth.renamed` (its public names are strings, loaded on first use).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernel", ("segsynth", "segsynth.lazy", "segsynth.renamed", "segsynth.recipes", "segsynth.console", "segsynth.progress")),
    ("files", ("segsynth.io",)),
    ("config", ("segsynth.config",)),
    ("contracts", ("segsynth.artifacts",)),
    (
        "run-folder io",
        (
            "segsynth.io.checkpoint",
            "segsynth.io.guard",
            "segsynth.io.hashing",
            "segsynth.io.model_config",
            "segsynth.io.run_log",
        ),
    ),
    ("runtime", ("segsynth.cpus", "segsynth.cpu_share", "segsynth.device", "segsynth.tracking", "segsynth.fits")),
    ("data", ("segsynth.data",)),
    ("models", ("segsynth.models", "segsynth.engine")),
    ("autoencoder", ("segsynth.autoencoder", "segsynth.latent")),
    ("diffusion", ("segsynth.diffusion",)),
    ("controlnet", ("segsynth.controlnet", "segsynth.backbone")),
    ("seg", ("segsynth.seg",)),
    ("evaluation", ("segsynth.evaluation",)),
    ("synth", ("segsynth.synth",)),
    ("benchmark", ("segsynth.benchmark",)),
    ("report", ("segsynth.report",)),
    ("run", ("segsynth.run",)),
    ("demo", ("segsynth.demo",)),
    ("cli", ("segsynth.cli", "segsynth.__main__")),
]


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module`` (longest declared prefix wins)."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # The root matches only itself, so a module missing from LAYERS is reported, not filed under it.
            covers = module == prefix or (prefix != "segsynth" and module.startswith(prefix + "."))
            if covers and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every ``segsynth`` import in the file, at any depth."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from segsynth.x import y`` may name a submodule y: count the deeper one when it exists.
            for alias in node.names:
                deeper = f"{target}.{alias.name}"
                sub = deeper.replace(".", "/")
                is_module = (PACKAGE_DIR.parent / f"{sub}.py").is_file() or (PACKAGE_DIR.parent / sub).is_dir()
                found.append((node.lineno, deeper if is_module else target))
    return [(line, name) for line, name in found if name == "segsynth" or name.startswith("segsynth.")]


def upward_imports() -> list[str]:
    """One line per import that runs up the stack: ``file:line: module (layer) imports target (layer)``."""
    bad = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        for line, target in imports_of(path):
            if layer_of(target) > own:
                bad.append(
                    f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {module} ({LAYERS[own][0]}) "
                    f"imports {target} ({LAYERS[layer_of(target)][0]})"
                )
    return bad


def test_no_import_runs_up_the_layers() -> None:
    bad = upward_imports()
    assert not bad, "imports that run back up the layers:\n" + "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    modules = [module_name(path) for path in PACKAGE_DIR.rglob("*.py")]
    assert len(modules) > 50
    for module in modules:
        layer_of(module)
