"""Training prompts: user turns sampled from the target itself, and text shipped in packages.

Never MT-bench or the offline benchmark's long-context set:

* ``self_instruct_prompts``: user turns the chat model writes itself when its chat template is
  cut off right after the user header (Magpie, arXiv 2406.08464): general chat requests in the
  model's own idiom, the distribution a chat drafter serves. A sample that shares an 8-word
  sequence with a held-out text is discarded.
* ``build_prompts``: module/function docstrings of installed packages wrapped in instruction
  templates (coding, explaining, summarising, writing, advice), plus synthetic arithmetic word
  problems. Deterministic for a given venv.
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

SOURCE_PACKAGES = ("numpy", "transformers", "hypothesis", "pytest", "sympy", "jinja2")

_SUMMARY_TEMPLATES = (
    "Write a Python function that does the following: {s}",
    "Explain in simple terms what this means: \"{s}\"",
    "I am new to programming. Can you explain, with an example, how to {l}?",
    "Write a short story about a programmer who needs to {l}.",
    "Give me three tips for how to {l} correctly.",
    "What are common mistakes when you {l}? Answer briefly.",
)
_TASK_VERBS = frozenset((
    "return", "compute", "convert", "create", "check", "get", "load", "save", "build", "apply",
    "find", "make", "parse", "read", "write", "add", "remove", "update", "generate", "calculate",
    "split", "sort", "merge", "format", "initialize", "run", "validate", "normalize", "reverse",
    "count", "filter", "extract", "compare", "combine", "copy", "decode", "encode", "print",
    "resize", "round",
))
_PARAGRAPH_TEMPLATES = (
    "Summarize the following text in two sentences:\n\n{p}",
    "Rewrite the following text so that a child could understand it:\n\n{p}",
    "What are the pros and cons of the approach described here?\n\n{p}",
)


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _package_files(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p for p in root.rglob("*.py") if "test" not in p.name)


def _summary_prompt(summary: str, rng: random.Random) -> str | None:
    words = summary.rstrip(".").split()
    # Imperative first lines ("Return the ...") read as tasks; other ones only as text to explain.
    if not 5 <= len(words) <= 25 or not summary[0].isupper() or "`" in summary or ">>>" in summary:
        return None
    template = rng.choice(_SUMMARY_TEMPLATES)
    if "{l}" in template and words[0].lower() not in _TASK_VERBS:  # not phrased as a task
        template = _SUMMARY_TEMPLATES[1]
    return template.format(s=summary, l=" ".join([words[0].lower(), *words[1:]]))


def _paragraph_prompt(paragraph: str, rng: random.Random) -> str | None:
    text = " ".join(paragraph.split())
    if (not 200 <= len(text) <= 700 or any(c in text for c in "`>|=") or "::" in text
            or text.split()[0].endswith(":")):  # "Args:", "Example:" sections
        return None
    return rng.choice(_PARAGRAPH_TEMPLATES).format(p=text)


def _arithmetic_prompt(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 40), rng.randint(2, 30), rng.randint(2, 9)
    item = rng.choice(("apples", "books", "pencils", "tickets", "shirts", "cookies"))
    return rng.choice((
        f"A shop sells {item} for ${b} each. Anna buys {a} {item} and pays with ${a * b + c * 10}"
        f" . How much change does she get? Explain step by step.",
        f"If {c} friends share {a * c} {item} equally, how many does each friend get? Explain.",
        f"What is {a} times {b}, plus {c}? Show your work.",
    ))


def build_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct prompts (about 1/10 arithmetic), in a seeded random order."""
    rng = random.Random(seed)
    prompts: list[str] = []
    seen: set[str] = set()
    for package in SOURCE_PACKAGES:
        for path in _package_files(package):
            for doc in _docstrings(path):
                paragraphs = [p for p in doc.split("\n\n") if p.strip()]
                if not paragraphs:
                    continue
                candidates = [_summary_prompt(" ".join(paragraphs[0].split()), rng)]
                candidates += [_paragraph_prompt(p, rng) for p in paragraphs[1:3]]
                for prompt in candidates:
                    if prompt and prompt not in seen:
                        seen.add(prompt)
                        prompts.append(prompt)
    rng.shuffle(prompts)
    num_arithmetic = count // 10
    prompts = prompts[: count - num_arithmetic] + [
        _arithmetic_prompt(rng) for _ in range(num_arithmetic)]
    rng.shuffle(prompts)
    if len(prompts) < count:
        raise ValueError(f"count={count}: only {len(prompts)} prompts available")
    return prompts


HELDOUT_NGRAM = 8
"""A sampled prompt sharing this many consecutive words with a held-out text is discarded."""


def _ngrams(text: str, n: int = HELDOUT_NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def user_turn_prefix(tokenizer: object) -> str:
    """The chat template up to (not including) the user's text: system turn + user header."""
    marker = "\x00USER\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}],
                                         add_generation_prompt=False, tokenize=False)
    return text[: text.index(marker)]


@torch.no_grad()
def self_instruct_prompts(
    model: torch.nn.Module, tokenizer: object, count: int, seed: int, *,
    exclude: Iterable[str] = (), max_new_tokens: int = 64, temperature: float = 1.0,
    top_p: float = 0.95, min_words: int = 4, max_attempts: int = 8,
) -> tuple[list[str], dict[str, int]]:
    """``count`` distinct user prompts sampled from the chat model (seeded), and the rejection
    counts by reason. A sample must end its turn within ``max_new_tokens`` (an unfinished one is
    usually a document, not a request), have at least ``min_words`` words, and share no
    ``HELDOUT_NGRAM``-word sequence with ``exclude``."""
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise ValueError("self_instruct_prompts needs a ChatML tokenizer (<|im_end|>)")
    banned = set().union(*(_ngrams(t) for t in exclude))
    ids = tokenizer(user_turn_prefix(tokenizer), return_tensors="pt",
                    add_special_tokens=False)["input_ids"]
    torch.manual_seed(seed)
    prompts: list[str] = []
    rejected = {"unfinished": 0, "short": 0, "duplicate": 0, "heldout_overlap": 0}
    for _ in range(max_attempts):
        want = count - len(prompts)
        if want <= 0:
            break
        n = want + want // 2 + 1  # about a quarter of samples run past max_new_tokens
        out = model.generate(ids.expand(n, -1), attention_mask=torch.ones(n, ids.shape[1],
                             dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=temperature, top_p=top_p, top_k=0,
                             eos_token_id=end_id, pad_token_id=end_id)
        for row in out[:, ids.shape[1]:]:
            if len(prompts) == count:
                break
            if not (row == end_id).any():
                rejected["unfinished"] += 1
                continue
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            if len(text.split()) < min_words:
                rejected["short"] += 1
            elif text in prompts:
                rejected["duplicate"] += 1
            elif _ngrams(text) & banned:
                rejected["heldout_overlap"] += 1
            else:
                prompts.append(text)
    if len(prompts) < count:
        raise RuntimeError(f"self_instruct_prompts: {len(prompts)}/{count} prompts after "
                           f"{max_attempts} rounds ({rejected})")
    return prompts, rejected
