"""The package reads top-down: surfaces (cli/, server/) -> live/ -> api -> transcription, loading,
generation -> models/, decoders/ -> leaves. These checks keep it so: imports only flow down (a
function-level import counts like any other), there is no cycle, no module grows past the
ceiling, and argparse stays in the surfaces."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lfm2_mlx"
CEILING = 600  # lines; over SOFT_LIMIT a module needs a reason below
SOFT_LIMIT = 400
LONG_FOR_A_REASON: dict[str, str] = {}

# Rank of each part: a module may import modules of its own rank or lower, never higher.
RANKS = [
    (
        0,
        (
            "errors",
            "files",
            "text",
            "recipes",
            "sample",
            "audio_io",
            "weights",
            "blas",
            "device",
            "models.mel",
            "vad",
        ),
    ),
    (1, ("chat", "models", "decoders", "generate", "rows", "policy", "batch")),
    (2, ("loading", "quantize", "transcribe", "replies", "shared_batch")),
    (3, ("api", "session", "convert")),
    (4, ("live",)),
    (5, ("cli", "server")),
]


def rank(module: str) -> int:
    best = None
    for r, prefixes in RANKS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (r, len(p))
    assert best is not None, f"lfm2_mlx.{module} has no rank in tests/test_layout.py"
    return best[0]


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] == "__main__":
            continue
        if parts:  # the package root only re-exports lazily
            out[".".join(parts)] = f
    return out


def imports(name: str, path: Path) -> set[str]:
    """The lfm2_mlx modules `name` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    known = modules()
    tree = ast.parse(path.read_text())
    # Imports for type annotations only (`if TYPE_CHECKING:`) do not run: they are not edges.
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("lfm2_mlx"):
                mod = node.module[len("lfm2_mlx") :].lstrip(".")
            else:
                continue
            targets = [f"{mod}.{a.name}".lstrip(".") for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name[len("lfm2_mlx.") :] for a in node.names if a.name.startswith("lfm2_mlx.")]
        for t in targets:
            if t in known and t != name:
                found.add(t)
                break
    return found


def test_imports_flow_down():
    wrong = []
    for name, path in modules().items():
        for dep in imports(name, path):
            if rank(dep) > rank(name):
                wrong.append(f"{name} (rank {rank(name)}) imports {dep} (rank {rank(dep)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {name: imports(name, path) for name, path in modules().items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of the code.
    graph = {n: {d for d in deps if not d.startswith(n + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


def test_module_sizes():
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        assert n <= CEILING, f"{name}: {n} lines"
        if n > SOFT_LIMIT:
            assert name in LONG_FOR_A_REASON, f"{name}: {n} lines; split it or give the reason here"


def test_argparse_only_in_the_surfaces():
    for name, path in modules().items():
        if rank(name) < 5:
            assert "argparse" not in path.read_text(), f"{name} parses flags; that belongs in cli/ or server/"
