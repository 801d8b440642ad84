#!/usr/bin/env python3
"""Fails when files under src/ import each other in a circle.

A file "imports" another when it names an item through a `crate::`, `super::` or `self::`
path that resolves to the other file (in a `use` line or inline in code). A module's
`mod child;` declaration is not an import: a parent owning its children is the tree, not an
arrow. The check keeps the layout a ladder: each file only reaches down.

Usage: scripts/import_cycles.py [SRC_DIR]   (default: src)
"""

import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", re.S)
COMMENT = re.compile(r"//[^\n]*")
CHILD = re.compile(r"(?<![A-Za-z0-9_:])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_of(path, src):
    """The module path (list of names) a file defines."""
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def file_of(module, files):
    """The longest prefix of `module` that is a file, or None."""
    for n in range(len(module), 0, -1):
        f = files.get(tuple(module[:n]))
        if f:
            return f
    return None


def resolve(kind, rest, here, is_mod_file):
    """An absolute module path for a `crate::`/`super::`/`self::` path written in `here`."""
    names = [n for n in rest.split("::") if n]
    # In foo.rs (not mod.rs), `self` is foo itself and `super` its parent: same rule as mod.rs.
    base = list(here)
    if kind == "crate":
        base = []
    elif kind == "super":
        base = base[:-1]
    while names and names[0] == "super":
        base = base[:-1]
        names = names[1:]
    del is_mod_file
    return base + names


def edges(src):
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                m = module_of(p, src)
                if os.path.basename(p) == "main.rs" and m == []:
                    continue  # the binary is its own crate
                files[tuple(m)] = p
    out = {p: set() for p in files.values()}
    for module, path in files.items():
        text = COMMENT.sub("", open(path, encoding="utf-8").read())
        # Unit tests sit at the end of a file and may reach anywhere: they are not the layout.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        is_mod = os.path.basename(path) in ("mod.rs", "lib.rs")
        targets = []
        for g in GROUP.finditer(text):
            prefix = g.group(2)
            for item in re.split(r"[,\s]+", re.sub(r"\{|\}", ",", g.group(3))):
                item = item.split(" as ")[0].strip()
                if item and item != "self":
                    targets.append(resolve(g.group(1), prefix + "::" + item, list(module), is_mod))
                elif item == "self":
                    targets.append(resolve(g.group(1), prefix, list(module), is_mod))
        for m in PATH.finditer(text):
            targets.append(resolve(m.group(1), m.group(2), list(module), is_mod))
        # A child module may be named without `self::` (`use cache::Entry;`, `cache::get(..)`).
        for m in CHILD.finditer(text):
            child = list(module) + [m.group(1)]
            if tuple(child) in files and m.group(0)[0] != ":":
                targets.append(child + m.group(2).split("::")[1:])
        for t in targets:
            f = file_of(t, files)
            if f and f != path:
                out[path].add(f)
    return out


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    graph = edges(src)
    found = cycles(graph)
    if not found:
        print(f"import cycles: none among {len(graph)} files under {src}/")
        return 0
    for comp in found:
        print(f"import cycle among {len(comp)} files:")
        members = set(comp)
        for f in comp:
            print(f"  {f} -> {', '.join(sorted(graph[f] & members))}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
