"""Check that llama3_lab's imports flow one way: each module imports only its own layer or lower ones.

    python scripts/check_layers.py    # exits 1 naming each arrow that runs back up, else prints the layers

Every ``import`` is read from the source (``ast``), module-level and deferred (inside functions) alike. A
deferred import into a higher layer is allowed only when it is a delegate named in ``DELEGATES`` with its
reason (``docs/ARCHITECTURE.md`` lists the same). A module missing from ``LAYERS`` is an error: a new module
must say where it sits.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llama3_lab"

#: Lowest first. A module may import its own layer and the layers below it.
LAYERS: list[tuple[str, list[str]]] = [
    ("units", ["units", "config_checks", "allocator"]),
    ("config", ["config", "rope", "gguf_metadata", "known_configs", "config_explain"]),
    ("files", ["assets", "tokenizer", "tokenizer_llama3", "tokenizer_gguf"]),
    ("hooks and cache", ["hook_points", "tokens", "memory", "activation_cache", "hooks", "gradients"]),
    ("model", ["kv_cache", "linear", "attention", "model"]),
    ("placement and loading", ["placement", "loading"]),
    ("analysis", ["analysis"]),
    ("sae", ["sae"]),
    ("decoding", ["sampling", "generation", "batch_generation", "session", "fast", "packaged"]),
    ("viz", ["viz"]),
    ("views and widgets", ["views", "widgets"]),
    ("entry points", ["notebook", "cli", "cli_generate", "__main__", "__init__"]),
]

#: (importer, imported) pairs allowed to point up, as deferred imports only, and why each is worth it.
DELEGATES: dict[tuple[str, str], str] = {
    ("config", "loading"): "LlamaConfig.from_params/_params_json/_gguf/_pretrained read the other formats",
    ("config", "model"): "LlamaConfig.activation_bytes sums the hook points' own shapes (meta device)",
    ("model", "loading"): "LlamaModel.save_pretrained writes the Hugging Face layout",
    ("model", "generation"): "LlamaModel.generate, the one-line way to generate",
    ("model", "session"): "LlamaModel.session, the one-line way to step",
}


def room(module: str) -> str:
    """``llama3_lab.loading.hf`` -> ``loading``; ``llama3_lab.model`` -> ``model``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(name: str) -> int:
    for index, (_, rooms) in enumerate(LAYERS):
        if name in rooms:
            return index
    raise SystemExit(
        f"llama3_lab/{name}: not in LAYERS of scripts/check_layers.py; say which layer it belongs to."
    )


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported llama3_lab module, line, deferred) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("llama3_lab"):
                found.append((name, node.lineno, _deferred(tree, node)))
    return found


def _deferred(tree: ast.Module, target: ast.AST) -> bool:
    """Inside a function, or under ``if TYPE_CHECKING:`` (never run): not a module-level import."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and target in ast.walk(node):
            return True
        if (
            isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
            and target in ast.walk(node)
        ):
            return True
    return False


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def module_level_circles() -> list[list[str]]:
    """Circles among module-level imports (modules, not rooms): Tarjan's strongly connected components."""
    graph: dict[str, set[str]] = {}
    modules = {_module_of(path): path for path in PACKAGE.rglob("*.py")}
    for module, path in modules.items():
        graph[module] = set()
        for target, _, deferred in imports(path, module):
            while target and target not in modules:  # "from .x import name" names a module or an attribute
                target = target.rpartition(".")[0]
            if target and not deferred and target != module:
                graph[module].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def check() -> list[str]:
    problems = [f"module-level import circle: {' -> '.join(circle)}" for circle in module_level_circles()]
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        here = room(module.removesuffix(".__init__") if module != "llama3_lab.__init__" else module)
        for target, line, deferred in imports(path, module.removesuffix(".__init__")):
            there = room(target)
            if there == here or layer_of(there) <= layer_of(here):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if not deferred:
                problems.append(
                    f"{where}: {here} (layer {LAYERS[layer_of(here)][0]}) imports {there} at module level"
                )
            elif (here, there) not in DELEGATES:
                problems.append(
                    f"{where}: {here} reaches up to {there}; invert it, or name the delegate in DELEGATES"
                )
    return problems


def main() -> int:
    problems = check()
    if problems:
        print("\n".join(problems))
        return 1
    for index, (name, rooms) in enumerate(LAYERS):
        print(f"{index:2d} {name:<22} {', '.join(rooms)}")
    print("delegates:", *(f"  {a} -> {b}: {why}" for (a, b), why in DELEGATES.items()), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
