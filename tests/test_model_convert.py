"""The embedded model's one-time conversion when two processes load it at once.

Both processes run ``load_model()``'s real conversion path; only the slow pieces are stand-ins
(the GGUF parse and the transformers loader), and the stand-in conversion of each process
waits at a barrier until the other one is converting too, so the two always race.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import types
from pathlib import Path

import pytest

from graft_sglang.engine import model

WEIGHTS = "model.safetensors"


def _stand_in_loader(barrier) -> object:
    """``_load_hf`` with the GGUF parse replaced: converting writes ``WEIGHTS`` (naming the
    writing process) once both processes are converting; loading reads it back."""

    def load(path, dtype, gguf_file=None):
        if gguf_file is None:  # loading the converted copy
            return model.LoadedModel((Path(path) / WEIGHTS).read_text(), None, Path(path).name)

        def save_weights(directory) -> None:
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / WEIGHTS).write_text(f"weights of {os.getpid()}")
            barrier.wait(timeout=60)  # both processes are mid-conversion now

        def save_tokenizer(directory) -> None:
            (Path(directory) / "tokenizer.json").write_text("{}")

        weights = types.SimpleNamespace(config=types.SimpleNamespace(quantization_config=None),
                                        hf_quantizer=None, save_pretrained=save_weights)
        return model.LoadedModel(weights, types.SimpleNamespace(save_pretrained=save_tokenizer),
                                 gguf_file)

    return load


def _load_concurrently(cache: str, barrier, results) -> None:
    os.environ["GRAFT_CACHE_DIR"] = cache
    model._load_hf = _stand_in_loader(barrier)
    model.embedded_gguf_path = lambda: Path(cache) / "embedded.gguf"
    try:
        results.put(("ok", model.load_model().model))
    except Exception as err:  # reported to the test, which fails on it
        results.put(("error", f"{type(err).__name__}: {err}"))


def test_two_processes_convert_at_once(tmp_path: Path) -> None:
    """Both loads succeed and see the same complete copy (the first rename's); no temporary
    directory is left behind."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_load_concurrently, args=(str(tmp_path), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [status for status, _ in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1] == outcomes[1][1]  # both use the winner's copy
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [model.DEFAULT_MODEL]
    converted = models / model.DEFAULT_MODEL
    assert sorted(p.name for p in converted.iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert (converted / WEIGHTS).read_text() == outcomes[0][1]


def test_conversion_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def broken(directory: Path) -> None:
        (directory / "part").write_text("half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        model.convert_once(target, broken)
    assert list((tmp_path / "models").iterdir()) == []
    assert model.convert_once(target, lambda d: (d / "ok").write_text("1")) == target
    assert (target / "ok").read_text() == "1"
