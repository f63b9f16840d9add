"""A tiny random-weight vision projector for a text model: a LLaVA-style `mlp` projector (one of
libmtmd's projector types) whose output width is the model's embedding width, written with the
`gguf` package in well under a second.

No vision model is on the package registry, so the tests (and anyone smoke-testing the image path on
their own text model) pair a text GGUF with this projector, as llama.cpp's own CI does with tiny
random models. The answers mean nothing; the path is real: libmtmd loads, encodes and evaluates it.

Usage: scripts/tiny-projector MODEL.gguf OUT.gguf [--image-size 32] [--patch-size 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

from gateway.gguf.header import read_gguf_info

HIDDEN = 64  # the vision encoder's width: tiny on purpose
HEADS = 4
FEED_FORWARD = 128
BLOCKS = 2  # the mlp projector reads the second-to-last block, but every block's tensors must exist
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def image_tokens(image_size: int, patch_size: int) -> int:
    """The tokens one image becomes: one per patch."""
    return (image_size // patch_size) ** 2


def write_tiny_projector(
    out: Path, embedding: int, *, image_size: int = 32, patch_size: int = 8, seed: int = 0, projector_type: str = "mlp"
) -> Path:
    """Writes the projector; `embedding` is the text model's n_embd (the projection width)."""
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    rng = np.random.default_rng(seed)
    positions = image_tokens(image_size, patch_size)

    def weights(*shape: int) -> np.ndarray:  # numpy order: the reverse of llama.cpp's dimensions
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    writer = gguf.GGUFWriter(str(out), "clip")
    writer.add_name("tiny random projector")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    writer.add_string("clip.projector_type", projector_type)  # the tensors below are mlp's
    # clip.cpp asserts on the exact key type: integers must be uint32, or the process aborts.
    for key, value in {
        "image_size": image_size,
        "patch_size": patch_size,
        "embedding_length": HIDDEN,
        "feed_forward_length": FEED_FORWARD,
        "block_count": BLOCKS,
        "projection_dim": embedding,
        "attention.head_count": HEADS,
    }.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", CLIP_MEAN)
    writer.add_array("clip.vision.image_std", CLIP_STD)

    writer.add_tensor("v.patch_embd.weight", weights(HIDDEN, 3, patch_size, patch_size))
    writer.add_tensor("v.position_embd.weight", weights(positions, HIDDEN))
    writer.add_tensor("v.pre_ln.weight", ones(HIDDEN))
    writer.add_tensor("v.pre_ln.bias", zeros(HIDDEN))
    for block in range(BLOCKS):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{prefix}.{name}.weight", weights(HIDDEN, HIDDEN))
            writer.add_tensor(f"{prefix}.{name}.bias", zeros(HIDDEN))
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{prefix}.{norm}.weight", ones(HIDDEN))
            writer.add_tensor(f"{prefix}.{norm}.bias", zeros(HIDDEN))
        # [64, 128] and [128, 64] in llama.cpp's order; a down matrix whose first dimension is the
        # hidden size would be swapped with the up one by clip.cpp's legacy fix.
        writer.add_tensor(f"{prefix}.ffn_up.weight", weights(FEED_FORWARD, HIDDEN))
        writer.add_tensor(f"{prefix}.ffn_up.bias", zeros(FEED_FORWARD))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weights(HIDDEN, FEED_FORWARD))
        writer.add_tensor(f"{prefix}.ffn_down.bias", zeros(HIDDEN))
    writer.add_tensor("mm.0.weight", weights(embedding, HIDDEN))
    writer.add_tensor("mm.0.bias", zeros(embedding))
    writer.add_tensor("mm.2.weight", weights(embedding, embedding))
    writer.add_tensor("mm.2.bias", zeros(embedding))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiny-projector", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the text model's GGUF")
    parser.add_argument("out", type=Path, help="where to write the projector GGUF")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    embedding = read_gguf_info(args.model).embedding_length
    if embedding <= 0:
        print(f"tiny-projector: {args.model} names no embedding width", file=sys.stderr)
        return 2
    write_tiny_projector(args.out, embedding, image_size=args.image_size, patch_size=args.patch_size, seed=args.seed)
    tokens = image_tokens(args.image_size, args.patch_size)
    print(f"{args.out}: mlp projector to width {embedding}, {tokens} tokens per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
