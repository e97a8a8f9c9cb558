#!/usr/bin/env python3
"""Summarises nvcc's `-Xptxas -v` logs (one per .cu object, written by `make cuda`): registers,
shared memory, stack and spill bytes per kernel and architecture. Exits non-zero when a kernel
spills and its source file does not explain it in a comment `ptxas-spill-ok: <kernel> <why>`."""
import re
import subprocess
import sys
from pathlib import Path

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
USAGE = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def main(logs):
    rows, current = [], None
    for log in logs:
        src = Path(log).read_text(errors="replace")
        source_file = Path(log).with_suffix("").with_suffix("").name  # foo.cu.ptxas -> foo
        for line in src.splitlines():
            if m := ENTRY.search(line):
                current = {"mangled": m.group(1), "arch": m.group(2), "file": source_file,
                           "regs": 0, "smem": 0, "stack": 0, "spill_st": 0, "spill_ld": 0}
                rows.append(current)
            elif current and (m := SPILL.search(line)):
                current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
            elif current and (m := USAGE.search(line)):
                current["regs"] = int(m.group(1))
                current["smem"] = int(m.group(2) or 0)
    for row, name in zip(rows, demangle([r["mangled"] for r in rows])):
        # Drop the argument list (cut at the first '(' after removing "(anonymous namespace)").
        row["name"] = name.replace("(anonymous namespace)::", "").split("(")[0]
    if not rows:
        print("ptxas-report: no kernels compiled yet")
        return 0
    print(f"{'kernel':60} {'arch':6} {'regs':>5} {'smem B':>8} {'stack B':>8} {'spill st/ld':>12}")
    bad = []
    for r in sorted(rows, key=lambda r: (r["file"], r["name"], r["arch"])):
        spill = r["spill_st"] + r["spill_ld"]
        print(f"{r['name'][:60]:60} {r['arch']:6} {r['regs']:5} {r['smem']:8} {r['stack']:8} "
              f"{r['spill_st']:>5}/{r['spill_ld']:<6}")
        if spill:
            short = r["name"].split("::")[-1].split("<")[0]
            cu = next(Path("kernels/cuda").glob(f"{r['file']}.cu"), None)
            text = cu.read_text() if cu else ""
            if not re.search(rf"ptxas-spill-ok:\s*{re.escape(short)}\b", text):
                bad.append(f"{r['name']} ({r['arch']})")
    print(f"\n{len(rows)} kernel instantiations; {len(bad)} with unexplained spills")
    for b in bad:
        print(f"  spill without a 'ptxas-spill-ok: <kernel> <why>' comment: {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
