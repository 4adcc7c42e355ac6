"""The project's layout: the import graph has no circles (counting imports inside functions and
under TYPE_CHECKING too, since they hide a circle rather than remove it), stages import only
downwards, and every command finds the release folder the same way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "train", "export", "benchmarks", "demo", "edgepack")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """Every project module ``path`` imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    return {name: project_imports(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return path[path.index(child) :] + [child]
            if child not in state and (cycle := visit(child, [*path, child])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    assert "export.pipeline" in graph["export.__main__"]  # the graph is really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# each imports only lower ones; edgepack (the command) runs any stage
LAYERS = {"runtime": 0, "train": 1, "export": 2, "benchmarks": 3, "demo": 3, "edgepack": 4}


def test_stages_import_only_downwards():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]
        or (
            target.split(".")[0] != module.split(".")[0]
            and LAYERS[target.split(".")[0]] == LAYERS[module.split(".")[0]]
        )
    ]
    assert upward == []


def test_every_command_takes_the_release_folder_from_the_same_place(monkeypatch, tmp_path):
    import export.__main__
    import train.__main__

    monkeypatch.setenv("EDGEPACK_MODELS_DIR", str(tmp_path))
    assert export.__main__.parse_args(["--dataset", "cifar10"]).models_dir == tmp_path
    assert train.__main__.parse_args(["--dataset", "cifar10"]).out == tmp_path


def test_the_runtime_never_imports_tensorflow_or_keras_anywhere():
    heavy = ("tensorflow", "keras", "tf_keras", "tf2onnx", "ai_edge_litert")
    found = []
    for path in (ROOT / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in heavy]
    assert not found, found
