#!/usr/bin/env python3
"""Fails when a crate of the workspace declares a dependency its code never names.

For each crate, a `[dependencies]` entry must be named (`name::` or `use name`, `-` read as `_`,
a `package =` rename by its key) in the crate's `src/`; a `[dev-dependencies]` entry in `src/`,
`tests/`, `benches/` or `examples/`. (What `cargo machete` does, without a tool to install:
CI runs offline.) A dependency needed without being named, say for a feature it turns on in
another crate, is listed in KEPT with why.

Usage: .ci/unused_deps.py
"""
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (crate directory, dependency): why it is kept though the code does not name it.
KEPT = {}

# Packages whose library has another name than the package.
LIBRARY_NAMES = {"md-5": "md5", "TinyUFO": "tinyufo"}


def crate_dirs():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        workspace = tomllib.load(f)["workspace"]
    dirs = ["."]
    for pattern in workspace["members"]:
        base = pattern.rstrip("*").rstrip("/")
        full = os.path.join(ROOT, base)
        if pattern.endswith("*"):
            dirs += [os.path.join(base, d) for d in sorted(os.listdir(full))
                     if os.path.exists(os.path.join(full, d, "Cargo.toml"))]
        else:
            dirs.append(base)
    return dirs


def text_of(crate, folders):
    chunks = []
    for folder in folders:
        path = os.path.join(ROOT, crate, folder)
        for base, _, files in os.walk(path):
            for name in files:
                if name.endswith(".rs"):
                    with open(os.path.join(base, name), encoding="utf-8") as f:
                        chunks.append(f.read())
    return "\n".join(chunks)


def named(ident, text):
    return re.search(r"(?<![A-Za-z0-9_])" + re.escape(ident) + r"(::|\s*;|\s*\{|\s+as\s)", text) is not None


def main():
    problems = []
    for crate in crate_dirs():
        with open(os.path.join(ROOT, crate, "Cargo.toml"), "rb") as f:
            manifest = tomllib.load(f)
        code = text_of(crate, ["src"])
        with_tests = code + text_of(crate, ["tests", "benches", "examples"])
        for table, text in (("dependencies", code), ("dev-dependencies", with_tests)):
            for name in manifest.get(table, {}):
                if (crate, name) in KEPT:
                    continue
                spec = manifest[table][name]
                package = spec.get("package", name) if isinstance(spec, dict) else name
                library = LIBRARY_NAMES.get(package, name).replace("-", "_")
                if not named(library, text):
                    problems.append(f"{crate}: [{table}] {name} is never named in its code")
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(1)
    print("every declared dependency is used")


if __name__ == "__main__":
    main()
