#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a loop, or a module imports from a layer
above its own.

For each crate (a directory holding src/lib.rs or src/main.rs), every `.rs` file is a module
(`src/store/s3.rs` is `store::s3`, `src/store/mod.rs` is `store`). An edge A -> B is a path
`crate::B...` or `super::...` in A's code (comments and strings aside) naming module B or an item
in it. A module naming its own descendants is containment (`pub use s3::S3Store`), not an
import. Loops are looked for twice: between files, and between the top-level modules they belong
to (so `store::head -> respond -> cors -> store` is a loop even when no two files name each other
both ways). 
A crate listed in LAYERS has its top-level modules in layers, top first; a module may import
only from its own layer or those below (docs/architecture.md draws them).

Usage: .ci/module_graph.py [CRATE_DIR...] (default: every crate of the workspace).
"""
import os
import re
import sys

LAYERS = {
    "crates/originpull-server": [
        ["server", "properties"],
        ["admin"],
        ["answer"],
        ["acme"],
        ["edge"],
        ["live"],
        ["pull"],
        ["metrics", "access_log"],
    ],
}

def modules(src):
    found = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                rel = []
            if rel and rel[0] == "bin":
                continue
            found["::".join(rel)] = path
    return found

CODE_NOISE = re.compile(r'//[^\n]*|"(?:\\.|[^"\\])*"|/\*.*?\*/', re.S)
PATH = re.compile(r'\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)|\b(crate|super)::\{([^}]*)\}')

def edges(mods):
    result = {}
    for mod, path in mods.items():
        text = CODE_NOISE.sub("", open(path, encoding="utf-8").read())
        # Test-only code may name anything.
        text = text.split("#[cfg(test)]")[0]
        parts = mod.split("::") if mod else []
        targets = set()
        for m in re.finditer(r'\b(crate|super)::([A-Za-z_][A-Za-z0-9_:]*|\{[^;]*?\})', text):
            root, rest = m.group(1), m.group(2)
            base = [] if root == "crate" else parts[:-1]
            heads = []
            if rest.startswith("{"):
                for piece in re.split(r",", rest.strip("{}")):
                    piece = piece.strip()
                    if piece:
                        heads.append(re.split(r"::|\s", piece)[0:3])
            else:
                heads.append(rest.split("::"))
            for segs in heads:
                segs = [s for s in segs if s]
                # The longest module path the reference names.
                best = None
                for n in range(len(segs), -1, -1):
                    candidate = "::".join(base + segs[:n])
                    if candidate in mods:
                        best = candidate
                        break
                if best is None or best == mod:
                    continue
                if mod == "" or best.startswith(mod + "::"):
                    continue  # containment: a module naming its own descendants
                targets.add(best)
        result[mod] = targets
    return result

def find_cycle(graph):
    white, grey, black = 0, 1, 2
    colour = {n: white for n in graph}
    stack = []
    def visit(n):
        colour[n] = grey
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, white) == grey:
                return stack[stack.index(m):] + [m]
            if colour.get(m, white) == white:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = black
        return None
    for n in sorted(graph):
        if colour[n] == white:
            found = visit(n)
            if found:
                return found
    return None

def all_cycles(graph):
    """One loop after another: each found loop's first edge is set aside before looking again."""
    remaining = {k: set(v) for k, v in graph.items()}
    cycles = []
    while True:
        cycle = find_cycle(remaining)
        if not cycle:
            return cycles
        cycles.append(cycle)
        remaining[cycle[0]].discard(cycle[1])

def top(mod):
    return mod.split("::")[0]

def check(crate_dir):
    src = os.path.join(crate_dir, "src")
    mods = modules(src)
    graph = edges(mods)
    problems = ["files: " + " -> ".join(c) for c in all_cycles(graph)]
    tops = {}
    for a, targets in graph.items():
        for b in targets:
            if top(a) != top(b) and top(a):
                tops.setdefault(top(a), set()).add(top(b))
    for a in list(tops):
        for b in tops[a]:
            tops.setdefault(b, set())
    problems += ["top-level modules: " + " -> ".join(c) for c in all_cycles(tops)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    layers = LAYERS.get(os.path.relpath(crate_dir, root))
    if layers:
        level = {m: i for i, layer in enumerate(layers) for m in layer}
        for a, targets in sorted(tops.items()):
            if a not in level:
                problems.append(f"module {a} is in no layer (add it to LAYERS)")
                continue
            for b in sorted(targets):
                if level.get(b, len(layers)) < level[a]:
                    problems.append(f"layers: {a} imports {b}, a layer above it")
    return problems

def crates(root):
    found = []
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", "fuzz", "node_modules")]
        if "Cargo.toml" in files and os.path.isdir(os.path.join(base, "src")):
            found.append(base)
    return sorted(found)

def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = sys.argv[1:] or crates(root)
    failed = False
    for crate in dirs:
        for problem in check(crate):
            print(f"{os.path.relpath(crate, root) or '.'}: module loop: {problem}")
            failed = True
    if failed:
        sys.exit(1)
    print(f"no module loops in {len(dirs)} crate(s)")

if __name__ == "__main__":
    main()
