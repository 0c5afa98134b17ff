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

from graft_sglang.cpu import platform
from graft_sglang.plugin.settings import GraftSettings, env_name, server_settings

logger = logging.getLogger(__name__)

# Defaults when none of --speculative-num-steps / -eagle-topk / -num-draft-tokens is given
# (graft-paper drafts deeper: ``default_steps``).
DEFAULT_STEPS, DEFAULT_TOPK, DEFAULT_DRAFT_TOKENS = 5, 8, 32
# Attention backends that read a custom tree mask with page_size > 1 (SGLang's own rule).
PAGED_TREE_BACKENDS = ("flashinfer", "fa3", "triton")


def max_draft_candidates(steps: int, topk: int) -> int:
    """Candidates an EAGLE draft loop of ``steps`` levels and width ``topk`` produces."""
    return topk + (steps - 1) * topk * topk


def draft_is_eagle3(draft_model_path: str | None, revision: str | None = None,
                    download: bool = False) -> bool:
    """Whether the draft checkpoint is an EAGLE-3 head, from its ``config.json``'s
    architectures (e.g. ``LlamaForCausalLMEagle3``): a local directory's, else a Hugging Face
    id's from the local HF cache. ``download``: fetch the file when the cache lacks it (the
    launcher, once per node; the hub's own ``HF_HUB_OFFLINE`` still holds); scheduler ranks
    never reach the network. Raises ValueError naming ``SGLANG_GRAFT_EAGLE3`` when the file
    cannot be read."""
    if not draft_model_path:
        return False
    config = Path(draft_model_path) / "config.json"
    if not config.is_file():
        from huggingface_hub import hf_hub_download

        try:
            config = Path(hf_hub_download(draft_model_path, "config.json", revision=revision,
                                          local_files_only=not download))
        except Exception as err:  # offline, not cached, unknown id: the operator must say
            where = "the local Hugging Face cache" if not download else "the Hugging Face hub"
            raise ValueError(
                f"GRAFT: cannot read {draft_model_path!r}'s config.json (not a local directory, "
                f"not found in {where}: {type(err).__name__}) to tell an EAGLE from an EAGLE-3 "
                f"head; pass a local --speculative-draft-model-path, download the head first, "
                f"or set {env_name('eagle3')}=1 (EAGLE-3) or 0 (EAGLE)") from None
    archs = json.loads(config.read_text()).get("architectures") or []
    return any("eagle3" in a.lower() for a in archs)


def check_attention_backends(backends: tuple[str | None, ...], page_size: int) -> None:
    """Refuse attention backends GRAFT's trees cannot be verified with: ``backends`` the
    (base, prefill, decode) names (None: not set), ``page_size`` the KV page size."""
    names = {b for b in backends if b is not None}
    if "trtllm_mha" in names:
        raise ValueError("--attention-backend trtllm_mha verifies chains only (topk = 1); "
                         "GRAFT needs a tree backend, e.g. flashinfer, fa3 or triton")
    unpaged = sorted(names - set(PAGED_TREE_BACKENDS))
    if page_size > 1 and unpaged:
        raise ValueError(f"GRAFT with --page-size > 1 needs --attention-backend in "
                         f"{PAGED_TREE_BACKENDS}, got {unpaged[0]!r}")


def check_server_args(sa: Any) -> None:
    """Refuse settings GRAFT cannot run with; ``sa`` is SGLang's (resolving) server args.
    Reads the ``SGLANG_GRAFT_*`` settings (once per process) and the draft head's config."""
    from graft_sglang.plugin.worker import check_substitution_targets

    check_substitution_targets()
    if sa.speculative_draft_model_path is None:
        raise ValueError("--speculative-algorithm GRAFT needs --speculative-draft-model-path "
                         "(an EAGLE or EAGLE-3 draft head)")
    if sa.speculative_use_rejection_sampling:
        raise ValueError("--speculative-use-rejection-sampling is not supported by GRAFT: "
                         "grafted nodes have no draft distribution (target-only sampling is "
                         "used, which is lossless)")
    for flag in ("single", "acc"):
        value = getattr(sa, f"speculative_accept_threshold_{flag}", 1.0)
        if value != 1.0:
            raise ValueError(f"--speculative-accept-threshold-{flag} must be 1.0 (the default) "
                             f"for GRAFT, got {value}: other values change target-only "
                             f"sampling's acceptance, which makes it lossy")
    raw = getattr(sa, "_raw_input", None) or {}
    if (getattr(sa, "attn_dp_size", 1) or 1) > 1 or raw.get("enable_dp_attention"):
        raise ValueError("--enable-dp-attention / --attn-dp-size > 1 (attention data "
                         "parallelism) is not supported by GRAFT: each attention-DP rank "
                         "would decide from its own batch whether to stop drafting, while "
                         "every rank must run every draft forward (they are collectives)")
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
    settings = server_settings(sa.speculative_draft_model_path)  # refuses malformed settings
    if settings.eagle3 is None:  # fails here, at start-up, if the head's config is unreadable
        draft_is_eagle3(sa.speculative_draft_model_path,
                        getattr(sa, "speculative_draft_model_revision", None), download=True)
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
    # As given: a backend SGLang picks itself is checked again when the worker starts.
    check_attention_backends((getattr(sa, "attention_backend", None),
                              getattr(sa, "prefill_attention_backend", None),
                              getattr(sa, "decode_attention_backend", None)),
                             getattr(sa, "page_size", 1) or 1)
    policy = settings.stage_policy()
    if policy is not None and max(policy.levels) >= steps:
        raise ValueError(f"{env_name('stage_levels')} {list(policy.levels)}: level "
                         f"{max(policy.levels)} needs --speculative-num-steps >= "
                         f"{max(policy.levels) + 1} (the draft loop has levels 0..steps-1), got "
                         f"{steps}")


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
            spec = _published_spec()
            if spec is None:  # before SGLang publishes its configuration: nothing to decide on
                return False
            path = spec.speculative_draft_model_path
            forced = server_settings(path).eagle3
            self._eagle3 = forced if forced is not None else draft_is_eagle3(
                path, getattr(spec, "speculative_draft_model_revision", None))
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
            sa.speculative_num_steps = default_steps(
                server_settings(sa.speculative_draft_model_path))
            sa.speculative_eagle_topk = DEFAULT_TOPK
            sa.speculative_num_draft_tokens = DEFAULT_DRAFT_TOKENS
        if sa.max_running_requests is None:
            sa.max_running_requests = 48
        if not sa.disable_overlap_schedule and sa.device == "cpu" and not platform.installed():
            # SGLang's overlap relay gathers with a Triton kernel that has no CPU path (the
            # stand-in's platform supplies one); SGLang does the same for its own algorithms.
            logger.warning("Overlap schedule is not available for GRAFT on this CPU: "
                           "--disable-overlap-schedule is set")
            sa.disable_overlap_schedule = True
        if sa.enable_mixed_chunk:
            sa.enable_mixed_chunk = False
        self._eagle3 = None  # decided again from the draft path now known


def _published_spec() -> Any:
    """The running server's speculative configuration (None before SGLang publishes it)."""
    try:
        from sglang.srt.runtime_context import get_spec

        spec = get_spec()
        return spec if spec.speculative_draft_model_path else None
    except (ImportError, ValueError, AttributeError):
        return None
