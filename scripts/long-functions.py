#!/usr/bin/env python3
"""List Rust functions longer than LIMIT lines (signature to closing brace), test code included.

Every `*.rs` under the given directories counts: library and binary code, `#[cfg(test)]`
modules, `tests.rs` files and integration tests under `tests/` (only `target/` is skipped).
A function nested in another is counted on its own as well as inside its parent.

Usage: scripts/long-functions.py [LIMIT] [DIR...]; exits 1 if any is found (CI runs it with 120).
"""
import re, sys, pathlib
limit = int(sys.argv[1]) if len(sys.argv) > 1 else 120
roots = sys.argv[2:] or ["crates"]
fn_re = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(const\s+)?(extern\s+"C"\s+)?fn\s+(\w+)')
out = []
for root in roots:
    for p in pathlib.Path(root).rglob("*.rs"):
        if "/target/" in str(p):
            continue
        lines = p.read_text().splitlines()
        i = 0
        while i < len(lines):
            l = lines[i]
            m = fn_re.match(l)
            if m:
                name = m.group(7); depth = 0; started = False; j = i
                while j < len(lines):
                    s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                    s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                    s = s.split("//")[0]
                    depth += s.count("{") - s.count("}")
                    if "{" in s: started = True
                    if not started and s.rstrip().endswith(";"): break
                    if started and depth <= 0: break
                    j += 1
                n = j - i + 1
                if started and n > limit:
                    out.append((n, f"{p}:{i+1}", name))
            i += 1
for n, where, name in sorted(out, reverse=True):
    print(f"{n:5} {where} {name}")
if out:
    print(f"{len(out)} function(s) longer than {limit} lines", file=sys.stderr)
    sys.exit(1)
