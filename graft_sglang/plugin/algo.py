"""``GraftAlgo``: how SGLang sees the GRAFT algorithm, and the checks of its server arguments.

GRAFT runs on the EAGLE machinery (``is_eagle()``: draft model loading, draft KV pools, hidden
state relays, target-verify CUDA graphs), so this class answers like EAGLE / EAGLE3 where
SGLang asks, and supplies the methods ``CustomSpecAlgo`` lacks in 0.5.23
(``create_future_map``, ``need_topk``, ``carries_draft_hidden_states``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from graft_sglang.plugin.settings import GraftSettings

logger = logging.getLogger(__name__)

# Defaults when none of --speculative-num-steps / -eagle-topk / -num-draft-tokens is given
# (graft-paper drafts deeper: ``default_steps``).
DEFAULT_STEPS, DEFAULT_TOPK, DEFAULT_DRAFT_TOKENS = 5, 8, 32
# Attention backends that read a custom tree mask with page_size > 1 (SGLang's own rule).
PAGED_TREE_BACKENDS = ("flashinfer", "fa3", "triton")


def max_draft_candidates(steps: int, topk: int) -> int:
    """Candidates an EAGLE draft loop of ``steps`` levels and width ``topk`` produces."""
    return topk + (steps - 1) * topk * topk


def draft_is_eagle3(draft_model_path: str | None) -> bool:
    """Whether the draft checkpoint (a local directory or a Hugging Face id) is an EAGLE-3
    head, from its config's architectures (e.g. ``LlamaForCausalLMEagle3``)."""
    if not draft_model_path:
        return False
    config = Path(draft_model_path) / "config.json"
    if not config.is_file():
        from huggingface_hub import hf_hub_download

        try:
            config = Path(hf_hub_download(draft_model_path, "config.json"))
        except Exception as err:  # any hub failure (offline, unknown id) means "cannot tell"
            logger.warning("GRAFT: cannot read %s's config (%s); assuming an EAGLE (not "
                           "EAGLE-3) head; set SGLANG_GRAFT_EAGLE3=1 if it is one",
                           draft_model_path, err)
            return False
    archs = json.loads(config.read_text()).get("architectures") or []
    return any("eagle3" in a.lower() for a in archs)


def check_server_args(sa: Any) -> None:
    """Refuse settings GRAFT cannot run with; ``sa`` is SGLang's (resolving) server args."""
    if sa.speculative_draft_model_path is None:
        raise ValueError("--speculative-algorithm GRAFT needs --speculative-draft-model-path "
                         "(an EAGLE or EAGLE-3 draft head)")
    if sa.speculative_use_rejection_sampling:
        raise ValueError("--speculative-use-rejection-sampling is not supported by GRAFT: "
                         "grafted nodes have no draft distribution (target-only sampling is "
                         "used, which is lossless)")
    if getattr(sa, "speculative_use_block_verification", False):
        raise ValueError("--speculative-use-block-verification is not supported by GRAFT")
    if sa.speculative_adaptive:
        raise ValueError("--speculative-adaptive is not supported by GRAFT (it needs topk = 1)")
    given = [sa.speculative_num_steps, sa.speculative_eagle_topk,
             sa.speculative_num_draft_tokens]
    if any(v is None for v in given) and any(v is not None for v in given):
        raise ValueError("GRAFT: give all of --speculative-num-steps, --speculative-eagle-topk "
                         "and --speculative-num-draft-tokens, or none (defaults "
                         f"{DEFAULT_STEPS} / {DEFAULT_TOPK} / {DEFAULT_DRAFT_TOKENS})")
    settings = GraftSettings.from_env()  # refuses malformed SGLANG_GRAFT_* settings
    steps = sa.speculative_num_steps or default_steps(settings)
    topk = sa.speculative_eagle_topk or DEFAULT_TOPK
    n = sa.speculative_num_draft_tokens or DEFAULT_DRAFT_TOKENS
    if steps < 1:
        raise ValueError(f"--speculative-num-steps must be >= 1 for GRAFT, got {steps}")
    if topk < 2:
        raise ValueError(f"--speculative-eagle-topk must be >= 2 for GRAFT, got {topk} (a "
                         "grafted tree is not a chain, and topk = 1 takes SGLang's chain path)")
    limit = 1 + max_draft_candidates(steps, topk)
    if not 2 <= n <= limit:
        raise ValueError(f"--speculative-num-draft-tokens must be in [2, {limit}] for "
                         f"--speculative-num-steps {steps} and --speculative-eagle-topk {topk} "
                         f"(the root plus the draft loop's candidates), got {n}")
    if (getattr(sa, "pp_size", 1) or 1) > 1:
        raise ValueError("GRAFT supports --pp-size 1 only (pipeline parallelism relays "
                         "SGLang's dense tree topology between stages)")
    backend = getattr(sa, "attention_backend", None)
    backends = {backend, getattr(sa, "decode_attention_backend", None),
                getattr(sa, "prefill_attention_backend", None)}
    if "trtllm_mha" in backends:
        raise ValueError("--attention-backend trtllm_mha verifies chains only (topk = 1); "
                         "GRAFT needs a tree backend, e.g. flashinfer, fa3 or triton")
    policy = settings.stage_policy()
    if policy is not None and max(policy.levels) >= steps:
        raise ValueError(f"SGLANG_GRAFT_STAGE_LEVELS {list(policy.levels)}: level "
                         f"{max(policy.levels)} needs --speculative-num-steps >= "
                         f"{max(policy.levels) + 1} (the draft loop has levels 0..steps-1), got "
                         f"{steps}")
    if (getattr(sa, "page_size", 1) or 1) > 1 and backend not in (None, *PAGED_TREE_BACKENDS):
        raise ValueError(f"GRAFT with --page-size > 1 needs --attention-backend in "
                         f"{PAGED_TREE_BACKENDS}, got {backend!r}")


def default_steps(settings: GraftSettings) -> int:
    """--speculative-num-steps when no tree size is given: graft-paper drafts one level past
    its deepest checkpoint (levels 0..5 for the paper's 0 / 1 / 5)."""
    policy = settings.stage_policy()
    return DEFAULT_STEPS if policy is None else max(DEFAULT_STEPS, max(policy.levels) + 1)


class GraftAlgo(CustomSpecAlgo):
    """The GRAFT algorithm as SGLang's scheduler and model runner see it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._eagle3: bool | None = None

    def is_eagle(self) -> bool:
        return True

    def is_eagle3(self) -> bool:
        """EAGLE-3 heads need the target's auxiliary hidden states and a draft-vocab map."""
        if self._eagle3 is None:
            forced = GraftSettings.from_env().eagle3
            self._eagle3 = forced if forced is not None else draft_is_eagle3(_draft_path())
        return self._eagle3

    def need_topk(self) -> bool:
        return True

    def carries_draft_hidden_states(self) -> bool:
        return True

    def supports_grammar_overlap(self) -> bool:
        return True  # the inherited EAGLE verify advances the grammar FSM

    def create_future_map(self, device: Any, req_to_token_pool: Any,
                          needs_cpu_seq_lens: bool = True,
                          needs_confidence_relay: bool = False) -> Any:
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens,
                         needs_confidence_relay)

    def handle_server_args(self, sa: Any) -> None:
        """Defaults and checks; ``sa`` is SGLang's stand-in, so only plain attribute writes."""
        check_server_args(sa)
        if sa.speculative_num_steps is None:
            sa.speculative_num_steps = default_steps(GraftSettings.from_env())
            sa.speculative_eagle_topk = DEFAULT_TOPK
            sa.speculative_num_draft_tokens = DEFAULT_DRAFT_TOKENS
        if sa.max_running_requests is None:
            sa.max_running_requests = 48
        if not sa.disable_overlap_schedule:
            logger.warning("GRAFT runs synchronously: --disable-overlap-schedule is set")
            sa.disable_overlap_schedule = True
        if sa.enable_mixed_chunk:
            sa.enable_mixed_chunk = False
        self._eagle3 = None  # decided again from the draft path now known


def _draft_path() -> str | None:
    """The draft model path of the running server (None before SGLang publishes it)."""
    try:
        from sglang.srt.runtime_context import get_spec

        return get_spec().speculative_draft_model_path
    except (ImportError, ValueError, AttributeError):
        return None
