#!/usr/bin/env python3
"""Checks the library's imports: no circle between its modules, and no import from a lower
floor to a higher one. Floors, lowest first, as the data flows (README, Layout):"""
import collections
import os
import re
import sys

FLOORS = [
    ["words", "hash", "time", "error", "backoff", "sys"],
    ["event", "redact"],
    ["telemetry"],
    ["grammar"],
    ["source"],
    ["assemble"],
    ["parse"],
    ["derive"],
    ["store"],
    ["output"],
    ["pipeline"],
    ["config"],
    ["watch"],
]
floor = {m: i for i, ms in enumerate(FLOORS) for m in ms}

mods = {}
for root, _, files in os.walk("src"):
    for f in files:
        if f.endswith(".rs"):
            p = os.path.join(root, f)
            rel = p[4:-3]
            rel = rel[:-4] if rel.endswith("/mod") else rel
            if rel not in ("main", "lib") and not rel.startswith("cli"):
                mods[rel.replace("/", "::")] = p

edges = collections.defaultdict(set)
for m, p in mods.items():
    text = open(p).read()
    cut = text.find("#[cfg(test)]")
    text = re.sub(r"//.*", "", text if cut < 0 else text[:cut])
    here = m.split("::")
    for use in re.finditer(r"\b(crate|super)((?:::[a-z_]+)+)", text):
        path = use.group(2).strip(":").split("::")
        full = (here[:-1] if use.group(1) == "super" else []) + path
        for k in range(len(full), 0, -1):
            target = "::".join(full[:k])
            if target in mods:
                # A module may use its ancestors' items (Rust's parent modules).
                if target != m and not m.startswith(target + "::"):
                    edges[m].add(target)
                break

problems = []
for m, ts in edges.items():
    for t in ts:
        a, b = m.split("::")[0], t.split("::")[0]
        if a not in floor or b not in floor:
            problems.append(f"{m}: module {a if a not in floor else b} has no floor in .ci/module-graph.py")
        elif floor[b] > floor[a]:
            problems.append(f"{m} imports {t}: a higher floor")

index, low, stack, on, n = {}, {}, [], set(), [0]
sys.setrecursionlimit(10000)


def strong(v):
    index[v] = low[v] = n[0]
    n[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            strong(w)
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
            problems.append("a circle of imports: " + ", ".join(sorted(comp)))


for v in list(mods):
    if v not in index:
        strong(v)
for p in sorted(set(problems)):
    print(p)
print(f"{len(mods)} modules, {sum(map(len, edges.values()))} imports between them", file=sys.stderr)
sys.exit(1 if problems else 0)
