"""Write a tiny Voxtral Realtime model that real vLLM loads in seconds, for the tests.

    python scripts/make_tiny_voxtral.py DIR

The directory gets what vLLM's Mistral-format loader reads for Voxtral Realtime:

* ``params.json``: the real model's structure at toy size (decoder width 128, two layers;
  causal rope encoder width 64, two layers, sliding window 750; 4x downsampling; the time
  conditioned norm), so vLLM picks ``VoxtralRealtimeGeneration`` and runs its real code paths.
* ``tekken.json``: a Tekken v11 tokenizer with the 256 byte tokens and 100 control tokens
  (``[STREAMING_PAD]`` among them) and the streaming audio settings that drive framing.
* ``consolidated.safetensors``: seeded random weights in Mistral's tensor names, so vLLM's real
  checkpoint loader runs too. The tied embedding is biased towards lower-case letters and the
  space, so the model's deltas carry visible characters (meaningless text, but text).

Weights are written with numpy only; the result is the same on every run and machine, so the
text a test sees is repeatable. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np

N_SPECIAL = 100
N_BYTES = 256
VOCAB = N_SPECIAL + N_BYTES
SEED = 20261202

CONTROL_TOKENS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[TRANSCRIBE]",
    39: "[STREAMING_PAD]",
    40: "[STREAMING_WORD]",
}
"""The control tokens mistral_common looks up by name; the rest are numbered placeholders."""

AUDIO = {
    "sampling_rate": 16_000,
    "frame_rate": 12.5,
    "num_mel_bins": 128,
    "hop_length": 160,
    "window_size": 400,
}

DECODER = {
    "dim": 128,
    "n_layers": 2,
    "head_dim": 32,
    "hidden_dim": 256,
    "n_heads": 4,
    "n_kv_heads": 2,
}
ENCODER = {
    "dim": 64,
    "n_layers": 2,
    "head_dim": 32,
    "hidden_dim": 128,
    "n_heads": 2,
    "n_kv_heads": 2,
}
T_COND_DIM = 32
DOWNSAMPLE = 4
VISIBLE = "abcdefghijklmnopqrstuvwxyz "
"""Characters whose embeddings are made large, so that greedy decoding picks them."""

# Mistral's pre-tokenizer pattern (the one its bundled Tekken files carry).
PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def tokenizer() -> dict:
    """Tekken v11: byte tokens after the control tokens, and the streaming audio settings."""
    return {
        "config": {
            "pattern": PATTERN,
            "num_vocab_tokens": N_BYTES,
            "default_vocab_size": VOCAB,
            "default_num_special_tokens": N_SPECIAL,
            "version": "v11",
        },
        "vocab": [
            {
                "rank": b,
                "token_bytes": base64.b64encode(bytes([b])).decode(),
                "token_str": chr(b) if 32 <= b < 127 else None,
            }
            for b in range(N_BYTES)
        ],
        "special_tokens": [
            {"rank": i, "token_str": CONTROL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
            for i in range(N_SPECIAL)
        ],
        "audio": {
            "sampling_rate": AUDIO["sampling_rate"],
            "frame_rate": AUDIO["frame_rate"],
            "audio_encoding_config": {
                k: AUDIO[k] for k in ("num_mel_bins", "hop_length", "window_size")
            },
            "chunk_length_s": None,
            "transcription_format": "streaming",
            "transcription_delay_ms": 480.0,
            "streaming_look_ahead_ms": 2.5,
            "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": 16,
        },
    }


def params() -> dict:
    """The model's structure: Voxtral Realtime's fields, at toy sizes."""
    encoder = {
        **ENCODER,
        "audio_encoding_args": {
            **AUDIO,
            "chunk_length_s": None,
            "global_log_mel_max": 1.5,
            "transcription_format": "streaming",
        },
        "vocab_size": VOCAB,
        "use_biases": True,
        "use_cache": False,
        "rope_theta": 1e6,
        "causal": True,
        "norm_eps": 1e-5,
        "pos_embed": "rope",
        "max_source_positions": None,
        "ffn_type": "swiglu",
        "norm_type": "rms_norm",
        "sliding_window": 750,
    }
    return {
        **DECODER,
        "use_biases": False,
        "causal": True,
        "rope_theta": 1e6,
        "norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "model_parallel": 1,
        "tied_embeddings": True,
        "sliding_window": 8192,
        "model_max_length": 8192,
        "max_position_embeddings": 8192,
        "ada_rms_norm_t_cond": True,
        "ada_rms_norm_t_cond_dim": T_COND_DIM,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": encoder,
                "downsample_args": {"downsample_factor": DOWNSAMPLE},
            }
        },
    }


class _Weights:
    """Seeded random tensors under Mistral's consolidated checkpoint names."""

    def __init__(self, seed: int = SEED) -> None:
        self._rng = np.random.default_rng(seed)
        self.tensors: dict[str, np.ndarray] = {}

    def random(self, name: str, *shape: int, std: float = 0.05) -> None:
        self.tensors[name] = (self._rng.standard_normal(shape) * std).astype(np.float32)

    def ones(self, name: str, size: int) -> None:
        self.tensors[name] = np.ones(size, dtype=np.float32)


def weights() -> dict[str, np.ndarray]:
    w = _Weights()
    mm = "mm_streams_embeddings.embedding_module."
    d, e = DECODER, ENCODER

    w.random(f"{mm}tok_embeddings.weight", VOCAB, d["dim"], std=1.0)
    scale = np.full(VOCAB, 0.05, dtype=np.float32)
    scale[[N_SPECIAL + ord(ch) for ch in VISIBLE]] = 1.0
    w.tensors[f"{mm}tok_embeddings.weight"] *= scale[:, None]
    w.ones("norm.weight", d["dim"])
    q, kv = d["n_heads"] * d["head_dim"], d["n_kv_heads"] * d["head_dim"]
    for i in range(d["n_layers"]):
        layer = f"layers.{i}."
        w.random(f"{layer}attention.wq.weight", q, d["dim"])
        w.random(f"{layer}attention.wk.weight", kv, d["dim"])
        w.random(f"{layer}attention.wv.weight", kv, d["dim"])
        w.random(f"{layer}attention.wo.weight", d["dim"], q)
        w.ones(f"{layer}attention_norm.weight", d["dim"])
        w.ones(f"{layer}ffn_norm.weight", d["dim"])
        w.random(f"{layer}feed_forward.w1.weight", d["hidden_dim"], d["dim"])
        w.random(f"{layer}feed_forward.w2.weight", d["dim"], d["hidden_dim"])
        w.random(f"{layer}feed_forward.w3.weight", d["hidden_dim"], d["dim"])
        w.random(f"{layer}ada_rms_norm_t_cond.0.weight", T_COND_DIM, d["dim"])
        w.random(f"{layer}ada_rms_norm_t_cond.2.weight", d["dim"], T_COND_DIM)

    enc = f"{mm}whisper_encoder."
    mels = AUDIO["num_mel_bins"]
    w.random(f"{enc}conv_layers.0.conv.weight", e["dim"], mels, 3)
    w.random(f"{enc}conv_layers.0.conv.bias", e["dim"])
    w.random(f"{enc}conv_layers.1.conv.weight", e["dim"], e["dim"], 3)
    w.random(f"{enc}conv_layers.1.conv.bias", e["dim"])
    heads = e["n_heads"] * e["head_dim"]
    for i in range(e["n_layers"]):
        layer = f"{enc}transformer.layers.{i}."
        w.random(f"{layer}attention.wq.weight", heads, e["dim"])
        w.random(f"{layer}attention.wq.bias", heads)
        w.random(f"{layer}attention.wk.weight", heads, e["dim"])  # keys carry no bias
        w.random(f"{layer}attention.wv.weight", heads, e["dim"])
        w.random(f"{layer}attention.wv.bias", heads)
        w.random(f"{layer}attention.wo.weight", e["dim"], heads)
        w.random(f"{layer}attention.wo.bias", e["dim"])
        w.ones(f"{layer}attention_norm.weight", e["dim"])
        w.ones(f"{layer}ffn_norm.weight", e["dim"])
        w.random(f"{layer}feed_forward.w1.weight", e["hidden_dim"], e["dim"])
        w.random(f"{layer}feed_forward.w3.weight", e["hidden_dim"], e["dim"])
        w.random(f"{layer}feed_forward.w2.weight", e["dim"], e["hidden_dim"])
        w.random(f"{layer}feed_forward.w2.bias", e["dim"])
    w.ones(f"{enc}transformer.norm.weight", e["dim"])
    w.random(f"{mm}audio_language_projection.0.weight", d["dim"], e["dim"] * DOWNSAMPLE)
    w.random(f"{mm}audio_language_projection.2.weight", d["dim"], d["dim"])
    return w.tensors


def write(directory: Path) -> None:
    from safetensors.numpy import save_file  # part of vLLM's environment

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tekken.json").write_text(json.dumps(tokenizer()), encoding="utf-8")
    (directory / "params.json").write_text(json.dumps(params(), indent=2), encoding="utf-8")
    tensors = {name: np.ascontiguousarray(t) for name, t in weights().items()}
    save_file(tensors, str(directory / "consolidated.safetensors"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    write(args.directory)
    print(f"wrote a tiny Voxtral Realtime model to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
