"""Cost-aware Graft: step costs, expected accepted length, and the per-step decisions."""

from graft_sglang.cost.acceptance import (
    ScoreCalibration,
    expected_tokens,
    fit_isotonic,
    reach_probabilities,
)
from graft_sglang.cost.decision import (
    DraftPlan,
    VerifyChoice,
    choose_verify_size,
    plan_draft,
    selection_order,
)
from graft_sglang.cost.model import (
    CostModel,
    load_cached,
    load_cost_model,
    load_or_measure,
    measure_costs,
    save_cached,
)
from graft_sglang.cost.policy import CostPolicy

__all__ = [
    "CostModel", "CostPolicy", "DraftPlan", "ScoreCalibration",
    "VerifyChoice", "choose_verify_size", "expected_tokens", "fit_isotonic",
    "load_cached", "load_cost_model", "load_or_measure", "measure_costs", "plan_draft",
    "reach_probabilities", "save_cached", "selection_order",
]
