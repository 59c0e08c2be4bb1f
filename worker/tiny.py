"""A tiny, randomly initialised Z-Image pipeline, built offline.

The real weights (about 20 GB) cannot be downloaded in tests or on a laptop
without a hub account. This pipeline has the real architecture and code path
(ZImagePipeline with a Qwen3 text encoder, a Z-Image transformer, a 4-block
VAE and a byte-level BPE tokenizer with a chat template) at a few hundred
thousand parameters: every byte of the worker's path is real except the
model's size, and its images are noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Chat markers the pipeline's chat template needs; ids follow the 256 byte tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IM_START_ID = 257
VOCABULARY_SIZE = 256 + len(SPECIAL_TOKENS)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT_HIDDEN_SIZE = 32


def build_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    """Build the pipeline and save_pretrained() it at path; return path."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=VOCABULARY_SIZE,
            hidden_size=TEXT_HIDDEN_SIZE,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
        )
    )
    # cap_feat_dim must equal the text encoder's hidden size; dim // n_heads == sum(axes_dims)
    transformer = ZImageTransformer2DModel(
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TEXT_HIDDEN_SIZE,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 128, 128],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    pipe: Any = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    return path


def _tokenizer() -> object:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocabulary = {char: index for index, char in enumerate(sorted(ByteLevel.alphabet()))}
    vocabulary |= {token: 256 + index for index, token in enumerate(SPECIAL_TOKENS)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocabulary,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_adapter(model: Path, path: Path, seed: int, rank: int = 4) -> Path:
    """A random LoRA adapter for the tiny pipeline's transformer (its attention projections),
    saved as one .safetensors file at path, as a character's adapter is; return path."""
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = ZImageTransformer2DModel.from_pretrained(model / "transformer")
    torch.manual_seed(seed)
    # init_lora_weights=False: random B as well as A, so the adapter changes the image from the start
    transformer.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    )
    ZImagePipeline.save_lora_weights(
        path.parent,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        weight_name=path.name,
    )
    return path
