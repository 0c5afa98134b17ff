"""Saving and loading the head in the checkpoint format SGLang loads with
``--speculative-algorithm EAGLE3 --speculative-draft-model-path DIR``.

``DIR/config.json``: a Llama config with ``architectures = ["LlamaForCausalLMEagle3"]``, one hidden
layer, ``draft_vocab_size``, ``target_hidden_size`` and ``eagle_config.
eagle_aux_hidden_state_layer_ids`` (SGLang captures the *output* of those target layers, i.e.
``hidden_states[i + 1]`` in transformers' numbering). ``DIR/model.safetensors``: ``fc.weight``,
``midlayer.*`` (separate q/k/v and gate/up projections, which SGLang's loader stacks), ``norm``,
``lm_head`` (draft vocabulary rows), ``d2t`` (int64, target id minus draft id) and ``t2d`` (bool
mask over the target vocabulary). No ``embed_tokens``: SGLang gives an EAGLE-3 head the target's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from graft_sglang.eagle3.head import Eagle3Head, HeadConfig

ARCHITECTURE = "LlamaForCausalLMEagle3"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "smollm2-135m-instruct"
"""The committed head for the embedded target."""


def sglang_config(config: HeadConfig, feature_layers: tuple[int, ...], dtype: str) -> dict:
    if len(feature_layers) != config.num_aux or min(feature_layers) < 1:
        raise ValueError(f"feature_layers: expected {config.num_aux} hidden_states indices >= 1, "
                         f"got {feature_layers}")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": 8192,
        "vocab_size": config.vocab_size,
        "draft_vocab_size": config.draft_vocab_size,
        "target_hidden_size": config.hidden_size,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in feature_layers],
                         "use_aux_hidden_state": True},
    }


def save_head(head: Eagle3Head, feature_layers: tuple[int, ...], out_dir: Path,
              dtype: torch.dtype = torch.bfloat16) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float weights in ``dtype``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in head.state_dict().items():
        if name.startswith("embed_tokens."):
            continue
        tensors[name] = value if name in ("d2t", "t2d") else value.to(dtype)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / "model.safetensors",
              metadata={"format": "pt"})
    config = sglang_config(head.config, feature_layers, str(dtype).removeprefix("torch."))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_head(path: Path, embed_weight: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> tuple[Eagle3Head, tuple[int, ...]]:
    """Load a head saved by ``save_head`` (or any one-layer EAGLE-3 checkpoint of this shape).
    Returns the head (weights in ``dtype``) and its feature layers (``hidden_states`` indices)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    if cfg.get("architectures") != [ARCHITECTURE] or cfg.get("num_hidden_layers") != 1:
        raise ValueError(f"path: {path} is not a one-layer {ARCHITECTURE} checkpoint")
    layer_ids = cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
    config = HeadConfig(
        hidden_size=cfg["hidden_size"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        intermediate_size=cfg["intermediate_size"], rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"], vocab_size=cfg["vocab_size"],
        draft_vocab_size=cfg["draft_vocab_size"], num_aux=len(layer_ids),
    )
    head = Eagle3Head(config, embed_weight.float())
    tensors = load_file(Path(path) / "model.safetensors")
    missing, unexpected = head.load_state_dict(
        {k: v if k in ("d2t", "t2d") else v.float() for k, v in tensors.items()}, strict=False)
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise ValueError(f"path: {path}: missing {missing}, unexpected {unexpected}")
    return head.to(dtype).eval().requires_grad_(False), tuple(i + 1 for i in layer_ids)
