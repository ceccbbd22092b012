#!/usr/bin/env python3
"""Import cycles in host/src, from its `use` lines and `crate::`/`super::` paths.

Two levels, as the architecture asks: between the top-level modules (folders and files under
host/src: config, train, hub, plugin, ...), and between the files of one folder (siblings; a
folder's mod.rs is its root and not counted, since it declares and re-exports its children).
Prints every cycle found and exits 1 if there is one, 0 otherwise.

    python3 scripts/import_cycles.py [host/src]
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "host/src")
# Binary-only files (main.rs, cli/) see the library as `vigil::`; the library's files are
# what the arrows are about.
SKIP = {"main.rs", "lib.rs"}


def module_of(path: pathlib.Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def cfg_test_free(text: str) -> str:
    """Drop `#[cfg(test)] mod tests { ... }` blocks: tests may reach anywhere."""
    out, i = [], 0
    for match in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if match.start() < i:
            continue
        out.append(text[i:match.start()])
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def paths_used(text: str) -> list[list[str]]:
    """Every `crate::a::b` and `super::a` path, with `use` groups expanded one level."""
    found = []
    for match in re.finditer(r"\b(crate|super)((?:::\s*\w+)*)(?:::\s*\{([^}]*)\})?", text):
        if not match.group(2) and not match.group(3):
            continue
        head = [match.group(1)] + [p.strip() for p in match.group(2).split("::") if p.strip()]
        group = match.group(3)
        if group:
            for item in group.split(","):
                first = item.strip().split("::")[0].strip()
                if first and first not in ("self", "*") and re.match(r"\w+$", first):
                    found.append(head + [first])
            found.append(head)
        else:
            found.append(head)
    return found


def resolve(module: list[str], path: list[str], is_root: bool) -> list[str]:
    if path[0] == "crate":
        return path[1:]
    # `super` from a file is its folder; from a folder's mod.rs, the folder's parent.
    base = module[:-1] if not is_root else module[:-1]
    rest = path[1:]
    while rest and rest[0] == "super":
        base, rest = base[:-1], rest[1:]
    return base + rest


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, seen = [], set()
    for start in sorted(edges):
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    key = frozenset(trail)
                    if key not in seen:
                        seen.add(key)
                        cycles.append(trail + [start])
                elif nxt not in trail and nxt > start:
                    stack.append((nxt, trail + [nxt]))
    return cycles


def main() -> int:
    files = [p for p in ROOT.rglob("*.rs") if p.relative_to(ROOT).parts[0] not in ("cli",)]
    modules = {tuple(module_of(p)): p for p in files if p.name not in SKIP}
    top: dict[str, set[str]] = {}
    inner: dict[str, dict[str, set[str]]] = {}
    for module, path in modules.items():
        text = cfg_test_free(strip_comments(path.read_text()))
        is_root = path.name == "mod.rs"
        for used in paths_used(text):
            target = resolve(list(module), used, is_root)
            if not target:
                continue
            if target[0] != module[0]:
                top.setdefault(module[0], set()).add(target[0])
            elif len(module) == 2 and not is_root and len(target) >= 2:
                folder, sibling = module[0], target[1]
                if sibling != module[1] and (folder, sibling) in modules and \
                        modules[(folder, sibling)].name != "mod.rs":
                    inner.setdefault(folder, {}).setdefault(module[1], set()).add(sibling)
    cycles = [("host/src", c) for c in find_cycles(top)]
    for folder, edges in sorted(inner.items()):
        cycles += [(f"host/src/{folder}", c) for c in find_cycles(edges)]
    for where, cycle in cycles:
        print(f"{where}: {' -> '.join(cycle)}")
    if not cycles:
        print("no import cycles between the modules of host/src or inside its folders")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
