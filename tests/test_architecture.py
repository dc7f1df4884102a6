"""The house's import rules, written down: a rule broken here is a wall moved.

Every import of the project's modules counts, at any depth (inside functions and under
``TYPE_CHECKING`` too): a lazy import is still a dependency. README "What is where" says why
each rule exists.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "protocols",
    "kit",
    "gateway",
    "hsm_sim",
    "issuer_sim",
    "loadtest",
    "benchmarks",
    "fuzz",
)
IO_LIBRARIES = ("anyio", "asyncio", "trio", "sniffio", "uvloop", "socket", "ssl", "structlog")

# (importer, forbidden import prefixes): a module matches a prefix when it is that module or
# lies under it. Exceptions are listed by importer module and imported prefix, with a reason.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("protocols", (*(p for p in PACKAGES if p != "protocols"), *IO_LIBRARIES)),
    ("kit", ("gateway", "issuer_sim", "loadtest", "benchmarks")),
    ("hsm_sim", ("gateway", "issuer_sim", "loadtest", "benchmarks")),
    ("issuer_sim", ("gateway", "loadtest", "benchmarks")),
    ("loadtest", ("gateway", "benchmarks")),
    ("gateway", ("hsm_sim", "issuer_sim", "loadtest", "benchmarks")),
    ("gateway.flow", ("gateway.edge", "gateway.ops", "gateway.app", "gateway.cli")),
    ("gateway.upstream", ("gateway.edge", "gateway.ops", "gateway.app", "gateway.cli")),
    ("gateway.journal", ("gateway.edge", "gateway.flow", "gateway.upstream", "gateway.ops")),
    ("gateway.risk", ("gateway.edge", "gateway.flow", "gateway.upstream", "gateway.ops")),
    ("fuzz", tuple(p for p in PACKAGES if p not in ("protocols", "fuzz"))),
    *((p, ("fuzz",)) for p in PACKAGES if p != "fuzz"),
)
EXCEPTIONS: Mapping[tuple[str, str], str] = {
    ("kit.keys", "hsm_sim"): "a dataset's clear test keys are put under the HSM's LMK with "
    "the HSM's own LMK code, as a key ceremony would",
    ("gateway.demo", "issuer_sim"): "the demo launcher writes the issuer simulators' config",
    ("gateway.journal.cli", "gateway.ops.audit"): "the journal's operator commands append to "
    "the audit chain, as the admin API does",
    ("loadtest.chaos", "gateway.journal"): "white box: checks the books in the switch's journal",
    ("loadtest.bench", "gateway.upstream.hsm_client"): "white box: `--target hsm` drives the "
    "HSM simulator through the switch's own HSM client, so the figure is what the switch sees",
    ("fuzz", "gateway.qr.models"): "the QR API's request models parse a peer's JSON bodies: "
    "a decoder to fuzz like the protocols' own",
}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imports_of(path: Path) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every absolute import in a file: (module, names imported from it; empty for ``import``)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (``from pkg import submodule`` counts as the
    submodule), plus the top-level name of every library it imports (for the sans-IO rule)."""
    mods = module_files(root)

    def resolve(name: str) -> str:
        target = name
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or name.split(".")[0]

    deps: dict[str, set[str]] = {}
    for name, path in mods.items():
        out: set[str] = set()
        for module, names in imports_of(path):
            submodules = {f"{module}.{n}" for n in names} & mods.keys()
            out |= submodules
            if len(submodules) < len(names) or not names:
                out.add(resolve(module))
        out.discard(name)
        deps[name] = out
    return deps


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(deps: Mapping[str, set[str]]) -> list[str]:
    found = []
    for importer, forbidden in RULES:
        for module, targets in deps.items():
            if not _under(module, importer):
                continue
            for target in targets:
                for prefix in forbidden:
                    if _under(target, prefix) and not any(
                        _under(module, m) and _under(target, t) for m, t in EXCEPTIONS
                    ):
                        found.append(f"{module} imports {target} ({importer} -/-> {prefix})")
    return sorted(found)


def cycles(deps: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in deps:
        if start in index:
            continue
        work = [(start, iter(sorted(deps[start] & deps.keys())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(deps[child] & deps.keys()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_rules_hold() -> None:
    assert violations(graph(ROOT)) == []


def test_no_import_cycles_between_modules() -> None:
    assert cycles(graph(ROOT)) == []


def test_every_exception_is_still_needed() -> None:
    deps = graph(ROOT)
    stale = [
        (m, t)
        for m, t in EXCEPTIONS
        if not any(_under(mod, m) and any(_under(d, t) for d in ds) for mod, ds in deps.items())
    ]
    assert stale == []


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"protocols/codec.py": "import anyio\n"},
            ["protocols.codec imports anyio (protocols -/-> anyio)"],
        ),
        (
            {
                "gateway/__init__.py": "",
                "gateway/config.py": "",
                "issuer_sim/host.py": "def f():\n    from gateway.config import load\n",
            },
            ["issuer_sim.host imports gateway.config (issuer_sim -/-> gateway)"],
        ),
        (
            {
                "gateway/flow/switch.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from gateway.ops.admin import x\n",
                "gateway/ops/admin.py": "",
            },
            ["gateway.flow.switch imports gateway.ops.admin (gateway.flow -/-> gateway.ops)"],
        ),
        (
            {
                "gateway/journal/__init__.py": "",
                "loadtest/chaos.py": "from gateway.journal import open_journal\n",
            },
            [],  # a documented white-box exception
        ),
    ],
)
def test_a_forbidden_import_is_caught(
    tmp_path: Path, files: Mapping[str, str], expected: list[str]
) -> None:
    assert violations(graph(_tree(tmp_path, files))) == expected


def test_a_cycle_is_caught(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "issuer_sim/a.py": "from issuer_sim.b import x\n",
            "issuer_sim/b.py": "def f():\n    import issuer_sim.c\n",
            "issuer_sim/c.py": "from issuer_sim import a\n",
            "issuer_sim/d.py": "from issuer_sim.a import y\n",
        },
    )
    assert cycles(graph(root)) == [["issuer_sim.a", "issuer_sim.b", "issuer_sim.c"]]
