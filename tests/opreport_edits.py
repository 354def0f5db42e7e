"""TEST DATA: edits of a real scheduler report (GGML_SCHED_DEBUG=2) that move graph nodes to
the CPU, the two ways a report can say so: only the node line, or the way llama.cpp's scheduler
prints it (the node in a CPU split of its own)."""

from __future__ import annotations

import re


def move_node_line(text: str, name: str, backend: str = "  CPU") -> str:
    """Edit only the node lines of ``name``: their backend field says ``backend``."""
    pattern = re.compile(rf"^(node #\s*\d+ \(.{{10}}\): {re.escape(name.rjust(20))} "
                         r"\(.{5}\) \[).{5}", re.MULTILINE)
    edited, n = pattern.subn(lambda m: m.group(1) + backend, text)
    assert n, f"no node {name} in the log"
    return edited


def move_to_cpu_split(text: str, name: str) -> str:
    """What the scheduler prints when it runs node ``name`` on the CPU: the CUDA0 split is cut
    around it, the node sits in a CPU split of its own, and later splits are numbered on."""
    out: list[str] = []
    shift = 0
    for line in text.splitlines():
        if m := re.match(r"^## SPLIT #(\d+): (\S+)(.*)$", line):
            index = int(m.group(1))
            shift = 0 if index == 0 else shift
            out.append(f"## SPLIT #{index + shift}: {m.group(2)}{m.group(3)}")
            continue
        node = re.match(r"^(node #\s*\d+ \(.{10}\): )(.{20})( \(.{5}\) \[).{5}(.*)$", line)
        if node and node.group(2).strip() == name:
            out += ["", f"## SPLIT #{len(_splits_so_far(out))}: CPU # 3 inputs: [q (8K)] ",
                    f"{node.group(1)}{node.group(2)}{node.group(3)}  CPU{node.group(4)}",
                    "", f"## SPLIT #{len(_splits_so_far(out)) + 1}: CUDA0 # 1 inputs: [o (8K)] "]
            shift += 2
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _splits_so_far(lines: list[str]) -> list[str]:
    """Split headers of the report being written (from its SPLIT #0 on)."""
    headers: list[str] = []
    for line in lines:
        if line.startswith("## SPLIT #0:"):
            headers = [line]
        elif line.startswith("## SPLIT #"):
            headers.append(line)
    return headers
