"""A tiny seeded Stable Diffusion pipeline built from the SD 1.5 configs in ../shared, shrunk so that
fine-tuning and generation run on a CPU in seconds (the diffusers test suite's get_dummy_components
idea): the same component classes, the real CLIP tokenizer and the real scheduler config.

Import the ``tiny_sd`` fixture into a test module (``from tests.sd_fixture import tiny_sd``) or
call ``build_tiny_sd(folder)`` (the benchmark's --tiny mode does). ``sd-variations`` needs an
image-variation model instead: ``tiny_sd_variations(tmp_path_factory)``, built once per session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "shared" / "models" / "sd15-config"
TINY_PX = 32  # image size; the two-level VAE below halves it for the latents


def _tiny_unet_vae(config: Path, cross_attention_dim: int, seed: int) -> tuple:
    """The tiny UNet (seeded by ``seed``) and VAE (``seed + 1``) every SD 1.x layout here shares."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg = json.loads((config / "unet" / "config.json").read_text())
    vae_cfg = json.loads((config / "vae" / "config.json").read_text())
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_PX // 2, in_channels=unet_cfg["in_channels"], out_channels=unet_cfg["out_channels"],
        block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, act_fn=unet_cfg["act_fn"], flip_sin_to_cos=unet_cfg["flip_sin_to_cos"],
        freq_shift=unet_cfg["freq_shift"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=vae_cfg["latent_channels"],
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=TINY_PX)
    return unet, vae


def build_tiny_sd(folder: Path, config: Path = CONFIG, seed: int = 0) -> Path:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text_cfg = json.loads((config / "text_encoder" / "config.json").read_text())
    unet, vae = _tiny_unet_vae(config, 32, seed)
    tokenizer = CLIPTokenizer.from_pretrained(config / "tokenizer")
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
        vocab_size=len(tokenizer), max_position_embeddings=text_cfg["max_position_embeddings"],
        hidden_act=text_cfg["hidden_act"], bos_token_id=text_cfg["bos_token_id"],
        eos_token_id=text_cfg["eos_token_id"], pad_token_id=text_cfg["pad_token_id"]))
    scheduler = PNDMScheduler.from_pretrained(config / "scheduler")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: Path, config: Path = CONFIG, seed: int = 0) -> Path:
    """The SDXL layout (two text encoders, pooled text and size conditioning) at the same tiny scale;
    no SDXL config is shared offline, so the shapes follow diffusers' own SDXL test components."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_PX // 2, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=32, sample_size=TINY_PX)
    tokenizer = CLIPTokenizer.from_pretrained(config / "tokenizer")
    text_cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              projection_dim=32, vocab_size=len(tokenizer), hidden_act="gelu",
                              bos_token_id=0, eos_token_id=2, pad_token_id=1)
    torch.manual_seed(seed + 2)
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(config / "tokenizer"),
        text_encoder=CLIPTextModel(text_cfg), text_encoder_2=CLIPTextModelWithProjection(text_cfg),
        scheduler=EulerDiscreteScheduler.from_pretrained(config / "scheduler"))
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd_variations(folder: Path, config: Path = CONFIG, seed: int = 0) -> Path:
    """The image-variation layout (``StableDiffusionImageVariationPipeline``: a CLIP image encoder in
    place of the text encoder, its projected embedding the UNet's cross-attention input) at the same
    tiny scale; the UNet and VAE shapes are build_tiny_sd's, the image encoder follows diffusers' own
    image-variation test components, the feature extractor the shared SD 1.5 one at TINY_PX."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionImageVariationPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    processor_cfg = json.loads((config / "feature_extractor" / "preprocessor_config.json").read_text())
    embed_dim = 32
    unet, vae = _tiny_unet_vae(config, embed_dim, seed)
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=embed_dim, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_PX, patch_size=4, layer_norm_eps=1e-5))
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": TINY_PX}, crop_size={"height": TINY_PX, "width": TINY_PX},
        image_mean=processor_cfg["image_mean"], image_std=processor_cfg["image_std"],
        resample=processor_cfg["resample"])
    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=PNDMScheduler.from_pretrained(config / "scheduler"),
        safety_checker=None, feature_extractor=feature_extractor, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def tiny_sd_variations(tmp_path_factory) -> Path:
    """The tiny image-variation folder of this test session (pytest's ``tmp_path_factory``), built on
    first use and reused after, whichever test module asks first."""
    folder = tmp_path_factory.getbasetemp() / "tiny-sd-variations"
    if not (folder / "model_index.json").is_file():
        if not (CONFIG / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"the SD 1.5 configs are missing ({CONFIG}); the Stable Diffusion tests build "
                                    "their tiny model from them")
        partial = folder.with_name(folder.name + ".partial")  # a failed build is never taken for a model
        shutil.rmtree(partial, ignore_errors=True)
        build_tiny_sd_variations(partial).rename(folder)
    return folder
