"""Tiny random-weight diffusers / transformers components, saved as a local pipeline folder.

Everything is built from config dicts and written with ``save_pretrained`` (nothing is downloaded),
as diffusers' own tests do. Weights come from a forked RNG seeded here, so the global stream is
untouched and the components are the same on every run.

* :func:`save_pipeline` — a Stable-Diffusion-like folder: ``UNet2DConditionModel`` on 4×8×8
  latents, ``AutoencoderKL`` (latents ×2 → 3×16×16 images), a scaled-linear scheduler, and (when
  transformers is installed and ``text=True``) a 2-layer ``CLIPTextModel`` with a byte-level
  tokenizer of 514 tokens (max length 8).
* :func:`save_detr` — a tiny ``DetrForObjectDetection`` (ResNet backbone of transformers, no timm),
  91 COCO classes + "no object", 5 queries.
* :func:`save_clip` — a tiny ``CLIPModel`` with the same tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

EMBED = 12      # text embedding width = the UNet's cross_attention_dim
TOKENS = 8      # tokenizer model_max_length
LATENT = (4, 8, 8)
IMAGE = (3, 16, 16)


def _seeded(build, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def tiny_unet():
    import diffusers

    return _seeded(lambda: diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED, norm_num_groups=4, attention_head_dim=2).eval())


def tiny_vae():
    import diffusers

    return _seeded(lambda: diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16).eval(), seed=1)


def tiny_scheduler(kind="DDIMScheduler", **extra):
    import diffusers

    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cfg.update(extra)
    return getattr(diffusers, kind)(**cfg)


def _byte_chars():
    """GPT-2's byte → printable-character table (the base alphabet of CLIP's BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def save_tokenizer(path: Path):
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=TOKENS)
    tok.save_pretrained(path)
    return tok


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=514, hidden_size=EMBED, intermediate_size=24, num_attention_heads=2,
                         num_hidden_layers=2, max_position_embeddings=TOKENS, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513)
    return _seeded(lambda: CLIPTextModel(cfg).eval(), seed=2)


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def save_pipeline(path: Path, *, text: bool = True, vae: bool = True, scheduler="DDIMScheduler", index: bool = True):
    """Write the tiny pipeline folder at ``path``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    entries = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
               "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", scheduler],
               "safety_checker": [None, None], "requires_safety_checker": False}
    tiny_unet().save_pretrained(path / "unet")
    tiny_scheduler(scheduler).save_pretrained(path / "scheduler")
    if vae:
        tiny_vae().save_pretrained(path / "vae")
        entries["vae"] = ["diffusers", "AutoencoderKL"]
    if text and has_transformers():
        tiny_text_encoder().save_pretrained(path / "text_encoder")
        save_tokenizer(path / "tokenizer")
        entries["text_encoder"] = ["transformers", "CLIPTextModel"]
        entries["tokenizer"] = ["transformers", "CLIPTokenizer"]
    if index:
        (path / "model_index.json").write_text(json.dumps(entries, indent=2))
    return path


def save_detr(path: Path, seed: int = 3):
    """A tiny DETR (91 classes + no-object, 5 queries) at ``path``; returns ``path``."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            out_features=["stage2"])
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, num_queries=5,
                     d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
                     encoder_attention_heads=2, decoder_attention_heads=2, num_labels=91)
    _seeded(lambda: DetrForObjectDetection(cfg).eval(), seed).save_pretrained(path)
    return Path(path)


def save_clip(path: Path, seed: int = 4):
    """A tiny CLIPModel (16×16 images, patch 8, width 12) with the byte-level tokenizer at ``path``."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=514, hidden_size=EMBED, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1,
                max_position_embeddings=TOKENS, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(image_size=16, patch_size=8, hidden_size=EMBED, intermediate_size=24, num_attention_heads=2,
                  num_hidden_layers=1)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    _seeded(lambda: CLIPModel(cfg).eval(), seed).save_pretrained(path)
    save_tokenizer(Path(path))
    return Path(path)
