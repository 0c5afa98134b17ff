"""Entry point of the plugin: registers GRAFT with SGLang's speculative-algorithm registry.

SGLang calls every ``sglang.srt.plugins`` entry point in each of its processes (launcher,
scheduler subprocesses, detokenizer), sometimes more than once, so registration is idempotent.
GRAFT is tested against one SGLang release: another one is warned about at every registration,
and refused when a GRAFT server starts if what GRAFT rebinds or overrides changed
(``worker.check_substitution_targets``).
"""

from __future__ import annotations

import logging
from typing import Any

ALGORITHM = "GRAFT"
TESTED_SGLANG = "0.5.23"

logger = logging.getLogger(__name__)


def _worker_factory(server_args: object) -> type:
    from graft_sglang.plugin.worker import GraftWorker

    return GraftWorker


def _validate_server_args(server_args: Any) -> None:
    """GRAFT's start-up checks in the launcher: this SGLang's signatures, then the arguments."""
    from graft_sglang.plugin.algo import check_server_args
    from graft_sglang.plugin.worker import check_substitution_targets

    check_substitution_targets()
    check_server_args(server_args)


def warn_if_untested(version: str) -> None:
    """A loud warning when ``version`` (this SGLang's) is not the release GRAFT is tested on."""
    if version != TESTED_SGLANG:
        logger.warning("GRAFT is tested with SGLang %s, this is SGLang %s: a GRAFT server "
                       "refuses to start if what it plugs into changed, and may misbehave "
                       "where it did not detect a change", TESTED_SGLANG, version)


def register() -> None:
    """Register ``GRAFT`` (a no-op if this process registered it already; the version
    warning is repeated)."""
    import sglang
    from sglang.srt.speculative import spec_registry
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from graft_sglang.cpu import platform
    from graft_sglang.plugin import metrics, radix_feed
    from graft_sglang.plugin.algo import GraftAlgo

    warn_if_untested(getattr(sglang, "__version__", "unknown"))
    platform.install()  # CPU serving on the stand-in sgl_kernel only; else a no-op
    if spec_registry.get_spec(ALGORITHM) is not None:
        return
    SpeculativeAlgorithm.register(
        ALGORITHM, supports_overlap=True, validate_server_args=_validate_server_args,
        spec_class=GraftAlgo,
    )(_worker_factory)
    radix_feed.register_hooks()
    metrics.register_hooks()
