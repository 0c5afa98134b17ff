"""Entry point of the plugin: registers GRAFT with SGLang's speculative-algorithm registry.

SGLang calls every ``sglang.srt.plugins`` entry point in each of its processes (launcher,
scheduler subprocesses, detokenizer), sometimes more than once, so registration is idempotent.
"""

from __future__ import annotations

ALGORITHM = "GRAFT"


def _worker_factory(server_args: object) -> type:
    from graft_sglang.plugin.worker import GraftWorker

    return GraftWorker


def register() -> None:
    """Register ``GRAFT`` (a no-op if this process registered it already)."""
    from sglang.srt.speculative import spec_registry
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from graft_sglang.plugin import metrics, radix_feed
    from graft_sglang.plugin.algo import GraftAlgo, check_server_args

    if spec_registry.get_spec(ALGORITHM) is not None:
        return
    SpeculativeAlgorithm.register(
        ALGORITHM, supports_overlap=False, validate_server_args=check_server_args,
        spec_class=GraftAlgo,
    )(_worker_factory)
    radix_feed.register_hooks()
    metrics.register_hooks()
