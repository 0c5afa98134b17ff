"""What the real-server tests share: prompts as token ids, transformers' greedy answers to them
(the reference every server must reproduce token by token), and starting a CPU server for a
test class that always ends (by pid) and shows its log when it fails."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from graft_sglang.cpu.launch_server import embedded_model_dir
from graft_sglang.server_process import ServerError, ServerProcess

# Small enough that a CPU server starts and answers in seconds; chunked prefill below the long
# prompt's length so that a prompt is prefilled in several chunks.
COMMON_ARGS = ("--max-total-tokens", "6144", "--max-running-requests", "4",
               "--chunked-prefill-size", "256", "--mem-fraction-static", "0.5")
# An 8-node tree: the size the CPU measurements favour (3 levels x top-4 drafted).
TREE_ARGS = ("--speculative-num-steps", "3", "--speculative-eagle-topk", "4",
             "--speculative-num-draft-tokens", "8")
QUESTIONS = (
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that reverses a list.",
    "Name three primary colors.",
    "Explain what a hash table is in two sentences.",
)
MAX_NEW = 32


@functools.cache
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


def chat_ids(text: str) -> list[int]:
    """The embedded model's chat template applied to one user turn, as token ids."""
    ids = tokenizer().apply_chat_template([{"role": "user", "content": text}],
                                          add_generation_prompt=True, tokenize=True,
                                          return_dict=False)
    return [int(t) for t in (ids["input_ids"] if isinstance(ids, dict) else ids)]


@functools.cache
def hf_model() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()),
                                                dtype=torch.float32).eval()


def hf_greedy(ids: Sequence[int], max_new: int) -> list[int]:
    """transformers' greedy decoding of ``ids``: the new tokens (stops at EOS)."""
    model = hf_model()
    with torch.inference_mode():
        out = model.generate(torch.tensor([list(ids)]), max_new_tokens=max_new, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def greedy(max_new: int = MAX_NEW, **extra: Any) -> dict[str, Any]:
    return {"temperature": 0.0, "max_new_tokens": max_new, **extra}


def generate_ids(server: ServerProcess, ids: Sequence[int], params: dict[str, Any],
                 **payload: Any) -> dict[str, Any]:
    """``/generate`` on token ids; returns SGLang's answer (``output_ids``, ``meta_info``)."""
    return server.generate({"input_ids": list(ids), "sampling_params": params, **payload})


def serve(args: Sequence[str], env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """The body of a server fixture: start ``ServerProcess(args, env)``, yield it, always end
    it (by pid) and print its log's tail (shown with a failing test; the log file is kept)."""
    server = ServerProcess([*args], env=env, startup_timeout=600)
    try:
        server.start()
    except ServerError as err:
        pytest.fail(f"the server did not start: {err}")
    try:
        yield server
    finally:
        server.stop()
        print(f"--- server log ({server.log_path}) ---\n{server.log_tail(40)}")
