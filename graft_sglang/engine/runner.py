"""Running methods over prompt sets and summarising them (shared by the demo and bench/).

A method's summary: tau (tokens committed per target forward, prefill excluded), decoding
tokens/s (wall time minus the target's prompt prefill) and end-to-end tokens/s, the share of
accepted draft-or-retrieved tokens that only retrieval proposed, time per stage, and whether
every output equals the reference.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from graft_sglang.calibration import Calibration, load_calibration
from graft_sglang.engine.decode import Generation, Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.base import Drafter
from graft_sglang.engine.drafters.eagle3 import load_eagle3_drafter
from graft_sglang.engine.drafters.lm import LMDrafter, truncated_copy
from graft_sglang.engine.methods import Method
from graft_sglang.retrieval.native import suffix_retriever

BAD_DRAFTER_LAYERS = 1  # the cheapest truncated copy of the target (the "bad drafter")


def chat_ids(tokenizer: object, prompt: str) -> list[int]:
    """Token ids of a one-turn chat prompt with the generation prompt appended."""
    out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                        add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


def stop_ids(tokenizer: object) -> tuple[int, ...]:
    """EOS and the chat end-of-turn token (if the vocabulary has one)."""
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return tuple(sorted(i for i in ids if i is not None))


def default_drafter(target: torch.nn.Module) -> tuple[Drafter, str]:
    """The committed EAGLE-3 head if its weights are present, else the truncated copy of the
    target. Returns the drafter and a description. Only missing weights fall back (the
    description says so); a head that fails to load raises."""
    try:
        return load_eagle3_drafter(target), "EAGLE-3 head (drafters/eagle3.py)"
    except FileNotFoundError as err:
        reason = str(err)
    name = f"truncated target, first {BAD_DRAFTER_LAYERS} layer(s) (no EAGLE-3 head: {reason})"
    return LMDrafter(truncated_copy(target, BAD_DRAFTER_LAYERS), "truncated"), name


def drafter_calibration(drafter: Drafter | None) -> Calibration:
    """The measured thresholds stored with the drafter's EAGLE-3 head, else the defaults."""
    return load_calibration(getattr(drafter, "weights_dir", None))


@dataclass
class MethodRun:
    """One method over a prompt set. ``per_prompt`` rows hold the raw per-request figures."""

    method: str
    settings: dict
    tokens: int = 0
    steps: int = 0
    accepted_drafts: int = 0
    accepted_grafted: int = 0
    verified_nodes: int = 0
    draft_forwards: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    identical: bool | None = None
    per_prompt: list[dict] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return self.tokens / max(1, self.steps)

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed: tokens over wall time minus the target's prompt prefill (the same
        work for every method; a draft model's own prefill stays in, as draft time)."""
        return self.tokens / max(1e-9, self.wall_seconds - self.seconds.get("prefill", 0.0))

    @property
    def e2e_tokens_per_s(self) -> float:
        """Tokens over the whole wall time, prefill included."""
        return self.tokens / max(1e-9, self.wall_seconds)

    @property
    def grafted_share(self) -> float:
        """Share of accepted (non-bonus) tokens that came from retrieved-only nodes."""
        return self.accepted_grafted / max(1, self.accepted_drafts)

    @property
    def verified_per_step(self) -> float:
        return self.verified_nodes / max(1, self.steps)

    @property
    def draft_forwards_per_step(self) -> float:
        return self.draft_forwards / max(1, self.steps)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("per_prompt", "outputs")}
        out.update(tau=self.tau, tokens_per_s=self.tokens_per_s,
                   e2e_tokens_per_s=self.e2e_tokens_per_s,
                   grafted_share=self.grafted_share, verified_per_step=self.verified_per_step,
                   draft_forwards_per_step=self.draft_forwards_per_step)
        return out


def run_method(
    engine: SpeculativeEngine, method: Method, prompts: Sequence[Sequence[int]],
    sampling: Sampling, settings: dict, reference: Sequence[Sequence[int]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> MethodRun:
    """Generate every prompt with ``method``; a fresh shared retriever per method, so no
    method retrieves another method's output (earlier prompts' outputs of the same method
    do feed it, as in serving)."""
    engine.shared_retriever = suffix_retriever()
    run = MethodRun(method.name, settings)
    for i, prompt in enumerate(prompts):
        t0 = time.perf_counter()
        gen: Generation = engine.generate(prompt, method, sampling)
        wall = time.perf_counter() - t0
        run.outputs.append(gen.tokens)
        run.tokens += len(gen.tokens)
        run.steps += gen.steps
        run.accepted_drafts += gen.accepted_drafts
        run.accepted_grafted += gen.accepted_grafted
        run.verified_nodes += gen.verified_nodes
        run.draft_forwards += gen.draft_forwards
        run.wall_seconds += wall
        for stage, sec in gen.seconds.items():
            run.seconds[stage] = run.seconds.get(stage, 0.0) + sec
        same = None if reference is None else gen.tokens == list(reference[i])
        run.per_prompt.append({"prompt": i, "tokens": len(gen.tokens), "steps": gen.steps,
                               "tau": gen.tau, "seconds": wall, "identical": same,
                               "stage_seconds": gen.seconds, "steps_log": gen.step_log})
        if progress is not None:
            progress(f"  {method.name:<14} prompt {i + 1}/{len(prompts)}: {len(gen.tokens)} "
                     f"tokens, tau {gen.tau:.2f}, {len(gen.tokens) / wall:.1f} tok/s"
                     + ("" if same is None else f", identical: {'yes' if same else 'NO'}"))
    if reference is not None:
        run.identical = all(r["identical"] for r in run.per_prompt)
    engine.shared_retriever = None
    return run


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
