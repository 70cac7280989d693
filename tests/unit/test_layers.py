"""The package's parts and the one direction of their imports (docs/architecture.md): a module
imports modules of its own part, or of parts below it, never above. Imports inside functions
count too."""

import ast
import pathlib

import enhrec_wrap

# From the top down.
LAYERS = ["cli", "inspect", "session", "login", "config", "log", "events", "kernel", "host", "errors"]
PACKAGE = pathlib.Path(enhrec_wrap.__file__).parent


def part_of(module: str) -> str | None:
    """'enhrec_wrap.log.store' -> 'log'; None for the package itself and its __main__."""
    names = module.split(".")
    return names[1] if len(names) > 1 and names[1] in LAYERS else None


def imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), path


def test_every_part_is_a_layer():
    found = {part_of(name) for name, _ in modules()} - {None}
    assert found == set(LAYERS)


def test_imports_only_go_down():
    upward = []
    for name, path in modules():
        here = part_of(name)
        if here is None:
            continue
        for target in imports(path):
            there = part_of(target) if target.startswith("enhrec_wrap.") else None
            if there is not None and LAYERS.index(there) < LAYERS.index(here):
                upward.append(f"{name} -> {target}")
    assert upward == []
