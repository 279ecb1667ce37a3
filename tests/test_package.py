"""The package's shape: no import cycles, the library never imports the tools or torch for
benchmarking, and no module outside a family's own asks which family it runs on."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bbt_jax"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p) for p in PKG.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (function-level imports included); `from pkg import
    sub` counts as importing pkg.sub when that is a module, else pkg."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_never_imports_tools_or_benchmark_state():
    for p in PKG.rglob("*.py"):
        names = imports(p)
        assert not any(n == "tools" or n.startswith("tools.") for n in names), p
        if p.name != "hf.py":  # hf.py reads pytorch_model.bin checkpoints with torch, lazily
            assert "torch" not in names, p
        if p.name not in ("cli.py",):
            assert "argparse" not in names, p


@pytest.mark.parametrize("family", ["roberta", "llama"])
def test_no_family_name_tests_outside_the_family_module(family):
    for p in PKG.rglob("*.py"):
        if p.name in (f"{family}.py",):
            continue
        text = p.read_text()
        assert f'== "{family}"' not in text and f"== '{family}'" not in text, p
