"""The offline speculative-decoding engine (batch size 1): draft, retrieve, build, verify in one
target forward, commit the accepted path's KV.

Every method of ``methods.METHODS`` runs through the same loop; ``autoregressive`` is the
reference. Greedy verification uses ``verify_tree_greedy``; sampling (temperature > 0) uses
``verify_tree_target_only`` on the target's processed distribution, so both are lossless.

A cost-aware method (its recipe's ``CostPolicy``) plans each step's draft depth before drafting
(from the root's retrieved tries and the previous step's level-0 draft confidences; a plan of no
draft and one node is a plain step) and verifies the best prefix of the built tree, with the
engine's ``CostModel``: measure it with ``engine.cost_probe.engine_cost_model`` (cached per
machine and model) or pass a table; the default is ``CostModel.analytic()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from graft_sglang.cost.model import CostModel
from graft_sglang.engine.cached_lm import CachedLM
from graft_sglang.engine.drafters.base import Drafter
from graft_sglang.engine.methods import Method
from graft_sglang.retrieval.base import PackedRetrievalSource
from graft_sglang.retrieval.native import suffix_retriever
from graft_sglang.step import GraftStep
from graft_sglang.tree.builder import GraftTree, count_grafted
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.subtree import root_only
from graft_sglang.verify import target_probs, verify_tree_greedy, verify_tree_target_only


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy. ``top_k = 0`` / ``top_p = 1`` disable those rules."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Generation:
    """Output and per-step statistics of one request."""

    tokens: list[int]
    steps: int = 0  # target forwards after prefill
    accepted_drafts: int = 0  # accepted tree nodes (bonus tokens excluded)
    accepted_grafted: int = 0  # ... of which came from retrieval only
    draft_forwards: int = 0
    verified_nodes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("prefill", "draft", "retrieve", "build", "verify", "commit"), 0.0))
    # One row per speculative step: verified nodes, accepted drafts, grafted among them, and
    # that step's seconds per stage (draft, retrieve, build, verify, commit).
    step_log: list[dict] = field(default_factory=list)

    def log_step(self, verified: int, accepted: int, grafted: int,
                 seconds_before: dict[str, float]) -> None:
        self.step_log.append({
            "verified": verified, "accepted": accepted, "grafted": grafted,
            **{k: round(v - seconds_before[k], 6) for k, v in self.seconds.items()
               if k != "prefill"},
        })

    @property
    def tau(self) -> float:
        """Mean tokens committed per target forward."""
        return len(self.tokens) / max(1, self.steps)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class SpeculativeEngine:
    """Runs any ``Method`` with a target model, an optional drafter and retrieval."""

    def __init__(self, target: torch.nn.Module, drafter: Drafter | None = None,
                 shared_retriever: PackedRetrievalSource | None = None,
                 cost: CostModel | None = None) -> None:
        """``shared_retriever``: one suffix retriever for every request, so finished requests
        feed its shared corpus (pass a fresh one per method when comparing methods, or a
        method would retrieve another method's output). ``None``: a fresh retriever per
        request (``native.suffix_retriever``), which sees only that request's own text.
        ``cost``: the step costs cost-aware methods decide by (default
        ``CostModel.analytic()``)."""
        self.cost = CostModel.analytic() if cost is None else cost
        self.target_model = target
        self.drafter = drafter
        self.vocab_size = int(target.config.vocab_size)
        eos = getattr(target.config, "eos_token_id", None)
        self.eos_ids = frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)
        self.shared_retriever = shared_retriever
        self._rid = 0

    def generate(self, prompt: Sequence[int], method: Method, sampling: Sampling) -> Generation:
        if len(prompt) < 1:
            raise ValueError("prompt must hold at least one token")
        if method.draft and self.drafter is None:
            raise ValueError(f"method {method.name!r} needs a drafter")
        if max(prompt) >= self.vocab_size or min(prompt) < 0:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if method.name == "autoregressive":
            return self._autoregressive(list(prompt), sampling)
        return self._speculative(list(prompt), method, sampling)

    # -- reference ------------------------------------------------------------------------
    def _autoregressive(self, prompt: list[int], sampling: Sampling) -> Generation:
        lm = CachedLM(self.target_model)
        gen = Generation(tokens=[])
        rng = torch.Generator().manual_seed(sampling.seed)
        t0 = time.perf_counter()
        if len(prompt) > 1:
            lm.forward(torch.tensor(prompt[:-1]), torch.arange(len(prompt) - 1),
                       last_logits_only=True)
        gen.seconds["prefill"] = time.perf_counter() - t0
        last, pos = prompt[-1], len(prompt) - 1
        while True:
            t0 = time.perf_counter()
            logits, _ = lm.forward(torch.tensor([last]), torch.tensor([pos]))
            gen.seconds["verify"] += time.perf_counter() - t0
            gen.steps += 1
            gen.verified_nodes += 1
            if sampling.temperature == 0:
                last = int(logits[0].argmax())
            else:
                probs = target_probs(logits[0], sampling.temperature, sampling.top_k,
                                     sampling.top_p)
                last = int(torch.multinomial(probs, 1, generator=rng))
            pos += 1
            if self._append_stopping(gen, [last], sampling):
                return gen

    def _append_stopping(self, gen: Generation, tokens: list[int], sampling: Sampling) -> bool:
        """Append up to EOS or a stop token (inclusive) or ``max_new_tokens``; True when
        finished. Tokens of an accepted path past that point are dropped."""
        for t in tokens:
            gen.tokens.append(t)
            if (t in self.eos_ids or t in sampling.stop_token_ids
                    or len(gen.tokens) >= sampling.max_new_tokens):
                return True
        return False

    # -- speculative ----------------------------------------------------------------------
    def step_for(self, method: Method) -> GraftStep:
        """The step one request of ``method`` runs: the method's recipe with the shared suffix
        retriever (or a fresh one) and a fresh successor table, where the recipe uses them."""
        recipe = method.recipe
        if recipe is None:
            raise ValueError(f"method {method.name!r} builds no tree")
        suffix = None
        if recipe.uses_suffix:
            suffix = self.shared_retriever or suffix_retriever()
        return GraftStep.for_recipe(recipe, suffix, vocab_size=self.vocab_size, cost=self.cost)

    def _speculative(self, prompt: list[int], method: Method, sampling: Sampling) -> Generation:
        drafter = self.drafter if method.draft else None
        feature_layers = drafter.feature_layers if drafter is not None else ()
        lm = CachedLM(self.target_model, feature_layers)
        gen = Generation(tokens=[])
        rng = torch.Generator().manual_seed(sampling.seed)
        rid = f"req{self._rid}"
        self._rid += 1
        step = self.step_for(method)

        t0 = time.perf_counter()
        if len(prompt) > 1:
            # The successor table learns from every prompt position's logits.
            logits, feats = lm.forward(torch.tensor(prompt[:-1]), torch.arange(len(prompt) - 1),
                                       last_logits_only=step.successor is None)
            step.observe_verified(torch.tensor(prompt[:-1]), logits)
        else:
            feats = {layer: torch.zeros(0) for layer in feature_layers}
        if drafter is not None:
            drafter.reset()
            drafter.observe(torch.tensor(prompt[:-1]), feats)
        step.start(rid, prompt)
        gen.seconds["prefill"] = time.perf_counter() - t0
        root = prompt[-1]
        level0: list[torch.Tensor] = []  # the last draft's level-0 confidences (a prior)
        try:
            while True:
                before = dict(gen.seconds)
                tree, window = self._step_tree(gen, method, step, drafter, rid, root,
                                               lm.cached_len, level0)
                t0 = time.perf_counter()
                logits, feats = lm.forward(tree.tokens[0], tree.layout.positions[0],
                                           new_visible=tree.layout.ancestors[0])
                if sampling.temperature == 0:
                    res = verify_tree_greedy(tree.tokens, tree.layout,
                                             logits.argmax(dim=-1).unsqueeze(0), window)
                else:
                    probs = target_probs(logits, sampling.temperature, sampling.top_k,
                                         sampling.top_p).unsqueeze(0)
                    res = verify_tree_target_only(
                        tree.tokens, tree.layout, probs,
                        torch.rand(1, window, generator=rng), torch.rand(1, generator=rng),
                        window,
                    )
                gen.seconds["verify"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                k = int(res.accept_length[0])
                nodes = res.accept_index[0, : k + 1].tolist()
                tokens = res.accepted_tokens(0)
                gen.steps += 1
                gen.verified_nodes += window
                gen.accepted_drafts += k
                grafted = count_grafted(tree.source[0].tolist(), nodes[1:])
                gen.accepted_grafted += grafted
                if self._append_stopping(gen, tokens, sampling):
                    gen.log_step(window, k, grafted, before)
                    return gen
                step.observe_verified(tree.tokens[0], logits)  # successor table rows
                start = lm.cached_len - window
                lm.keep(start, nodes)
                if drafter is not None:
                    drafter.observe(torch.tensor([root, *tokens[:-1]]),
                                    {layer: f[nodes] for layer, f in feats.items()})
                step.commit(rid, tokens)
                root = tokens[-1]
                gen.seconds["commit"] += time.perf_counter() - t0
                gen.log_step(window, k, grafted, before)
        finally:
            step.finish(rid)

    def _step_tree(
        self, gen: Generation, method: Method, step: GraftStep, drafter: Drafter | None,
        rid: str, root: int, seq_len: int, level0: list[torch.Tensor] | None = None,
    ) -> tuple[GraftTree, int]:
        """Plan, draft, retrieve, build and size this step's tree; returns it and its verified
        width. ``level0`` holds the last draft's level-0 confidences [1, K] (updated here),
        the planner's prior for this step's (the engine drafts level 0 with a pass)."""
        rule = method.recipe.stop
        roots, lens = torch.tensor([root]), torch.tensor([seq_len])
        t0 = time.perf_counter()
        level0 = [] if level0 is None else level0
        root_tries, depth = None, method.depth
        if drafter is not None and level0 and method.recipe.cost.plans_draft:
            root_tries = step.retrieve_root([rid], roots)
            plan = step.plan(level0[0], root_tries, method.depth, level0_passes=1)
            if plan is not None:
                depth = plan.levels
                if depth == 0 and plan.size == 1:  # a plain step
                    gen.seconds["retrieve"] += time.perf_counter() - t0
                    return root_only(roots, lens), 1
        t1 = time.perf_counter()
        quotas = None
        passes = 0
        if drafter is not None and depth > 0:
            before = getattr(drafter, "forward_count", 0)
            draft = drafter.propose(root, method.topk, depth,
                                    rule.for_one_request() if rule.active else None)
            passes = getattr(drafter, "forward_count", 0) - before
            gen.draft_forwards += passes
            quotas = step.draft_quotas(draft, method.topk)  # the checkpoint each stopped at
            first = draft.parents < 0
            if bool(first.any()):
                level0[:] = [draft.scores[first].view(1, -1)]
        else:
            draft = DraftCandidates.empty(1)
        t2 = time.perf_counter()
        # sources compete for the budget
        retrieved = step.retrieve([rid], roots, draft, quotas, root=root_tries)
        t3 = time.perf_counter()
        tree, _ = step.tree(roots, lens, draft, retrieved, quotas)
        tree, _ = step.size(tree, passes)
        if method.trim:
            tree = tree.truncated(int(tree.num_real[0]))
        t4 = time.perf_counter()
        gen.seconds["draft"] += t2 - t1
        gen.seconds["retrieve"] += t1 - t0 + t3 - t2
        gen.seconds["build"] += t4 - t3
        return tree, tree.budget
