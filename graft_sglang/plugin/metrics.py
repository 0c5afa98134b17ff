"""Graft's per-source acceptance metrics next to SGLang's own speculative metrics.

SGLang reports ``avg_spec_accept_length`` in each scheduler's internal state (``/server_info``,
``internal_states[i]``; ``sglang.benchmark.serving`` reads it from there). An AFTER hook on the
method that writes it adds the GRAFT worker's counters beside it.
"""

from __future__ import annotations

from typing import Any

INTERNAL_STATE = ("sglang.srt.managers.scheduler_components.internal_state."
                  "SchedulerInternalStateController._add_speculative")


def graft_metrics(graft: Any) -> dict[str, float | int]:
    """The counters of a worker's ``GraftState``: accepted tokens (bonus excluded) by the source
    of their tree node, the grafted share of them, and how many draft loops stopped early
    (``graft_draft_stops_after_level_<i>``: passes after level ``i`` skipped), and the steps a
    cost-aware plan made plain (``graft_plain_steps``) and verified at each width
    (``graft_verify_width_<n>_steps``)."""
    return {
        "graft_steps": graft.steps,
        "graft_accepted_draft_tokens": graft.accepted_draft,
        "graft_accepted_grafted_tokens": graft.accepted_grafted,
        "graft_grafted_share": graft.grafted_share,
        "graft_plain_steps": graft.plain_steps,
        **{f"graft_verify_width_{n}_steps": count for n, count in sorted(graft.widths.items())},
        **{f"graft_draft_stops_after_level_{level}": count
           for level, count in sorted(graft.stops.items())},
    }


def add_graft_metrics(result: Any, controller: Any, state: dict[str, Any]) -> Any:
    """Also, for every speculative algorithm (the plugin loads in every SGLang server), the raw
    counters behind ``avg_spec_accept_length``, so that a benchmark can take the accept length
    of one run from their difference: ``spec_accept_tokens`` and ``spec_verify_steps``."""
    scheduler = controller.scheduler
    reporter = getattr(scheduler, "metrics_reporter", None)
    if reporter is not None and not scheduler.spec_algorithm.is_none():
        # SGLang moves the current log interval's counts into its totals at each decode log
        # line only: both parts together are every step so far.
        state["spec_accept_tokens"] = int(reporter.spec_total_num_accept_tokens
                                          + reporter.spec_num_accept_tokens)
        state["spec_verify_steps"] = int(reporter.spec_total_num_forward_ct
                                         + reporter.spec_num_forward_ct)
    graft = getattr(getattr(scheduler, "draft_worker", None), "graft", None)
    if graft is not None:
        state.update(graft_metrics(graft))
    return result


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(INTERNAL_STATE, add_graft_metrics, HookType.AFTER)
