"""Tiny models of the image-text-to-text model types that are not decoder-only chat models, which vlsft refuses when
training starts (`vlsft.not_chat_models`): each the real model class of transformers' image-text-to-text mapping,
built from its config class with random weights and one-layer sizes, and its real processor class where the refusal
is decided by the processor (with a byte-level tokenizer trained in-process), else None.

T5Gemma 2, ShieldGemma 2 and DiffusionGemma come with the tiny Gemma 3 / Gemma 4 processor and its stock chat template,
as their checkpoints ship Gemma processors: the refusal must come from their config, not from a missing template.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import transformers as T
from transformers import PreTrainedTokenizerFast

from vlsft.testing.tiny_tokenizers import _train_byte_level

_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_SIGLIP = dict(_VISION, model_type="siglip_vision_model", image_size=32, patch_size=8, vision_use_head=False)
_TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_GEMMA = dict(_TEXT, num_key_value_heads=1, head_dim=16)
_GEMMA3_TEXT = dict(_GEMMA, sliding_window=16, query_pre_attn_scalar=16)
_OPT = dict(model_type="opt", vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
            word_embed_proj_dim=32)
_BLIP_IMAGES = dict(size={"height": 32, "width": 32})


def _tokenizer(*special: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with `<s>`, `</s>`, `<pad>`, `<unk>` and `special`; no chat template."""
    base = ["<s>", "</s>", "<pad>", "<unk>"]
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_byte_level(base + list(special), vocab_size=300),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )


def _esm_tokenizer() -> T.EsmTokenizer:
    """Evolla's protein tokenizer (ESM's vocabulary of amino acids and structure letters), from a file written here."""
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", *"ACDEFGHIKLMNPQRSTVWYacdefghiklmnpqrstvwy#", "<mask>"]
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return T.EsmTokenizer(vocab_file=str(path))


def _blip2_like(config_class, model_class, processor_factory):
    config = config_class(vision_config=dict(_VISION, image_size=32, patch_size=8),
                          qformer_config=dict(_TEXT, encoder_hidden_size=32), text_config=_OPT, num_query_tokens=4)
    return model_class(config), processor_factory()


def _blip():
    vision = dict(_VISION, image_size=32, patch_size=8)
    config = T.BlipConfig(vision_config=vision, text_config=_TEXT, projection_dim=32)
    return T.BlipForConditionalGeneration(config), T.BlipProcessor(T.BlipImageProcessor(**_BLIP_IMAGES), _tokenizer())


def _blip2():
    return _blip2_like(T.Blip2Config, T.Blip2ForConditionalGeneration, lambda: T.Blip2Processor(
        T.BlipImageProcessor(**_BLIP_IMAGES), _tokenizer(), num_query_tokens=4))


def _instructblip():
    return _blip2_like(T.InstructBlipConfig, T.InstructBlipForConditionalGeneration, lambda: T.InstructBlipProcessor(
        T.BlipImageProcessor(**_BLIP_IMAGES), _tokenizer(), _tokenizer(), num_query_tokens=4))


def _instructblipvideo():
    return _blip2_like(T.InstructBlipVideoConfig, T.InstructBlipVideoForConditionalGeneration,
                       lambda: T.InstructBlipVideoProcessor(T.InstructBlipVideoVideoProcessor(**_BLIP_IMAGES),
                                                            _tokenizer(), _tokenizer(), num_query_tokens=4))


def _git():
    processor = T.GitProcessor(T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), _tokenizer())
    return T.GitForCausalLM(T.GitConfig(vision_config=dict(_VISION, image_size=32, patch_size=8), **_TEXT)), processor


def _idefics():
    config = T.IdeficsConfig(
        **_TEXT, cross_layer_interval=1,
        vision_config=dict(embed_dim=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64),
        perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8),
    )
    processor = T.IdeficsProcessor(T.IdeficsImageProcessor(image_size=32), _tokenizer())
    return T.IdeficsForVisionText2Text(config), processor


def _kosmos2():
    config = T.Kosmos2Config(text_config=dict(vocab_size=128, embed_dim=32, layers=1, attention_heads=2, ffn_dim=64),
                             vision_config=dict(_VISION, image_size=32, patch_size=8), latent_query_num=4)
    processor = T.Kosmos2Processor(T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), _tokenizer(),
                                   num_patch_index_tokens=16)
    return T.Kosmos2ForConditionalGeneration(config), processor


def _kosmos2_5():
    config = T.Kosmos2_5Config(
        text_config=dict(vocab_size=128, embed_dim=32, layers=1, attention_heads=2, ffn_dim=64), latent_query_num=4,
        vision_config=dict(_VISION, head_dim=16, patch_embed_hidden_size=48),
    )
    tokenizer = _tokenizer("<image>", "</image>")
    tokenizer.boi_token, tokenizer.eoi_token, tokenizer.image_token = "<image>", "</image>", "<s>"
    processor = T.Kosmos2_5Processor(T.Kosmos2_5ImageProcessor(max_patches=16), tokenizer, num_image_tokens=4)
    return T.Kosmos2_5ForConditionalGeneration(config), processor


def _fuyu():
    config = T.FuyuConfig(**_TEXT, patch_size=4, text_config=dict(_TEXT, model_type="persimmon"))
    processor = T.FuyuProcessor(T.FuyuImageProcessor(size={"height": 32, "width": 32},
                                                      patch_size={"height": 4, "width": 4}),
                                _tokenizer("|SPEAKER|", "|NEWLINE|"))
    return T.FuyuForCausalLM(config), processor


def _evolla():
    config = T.EvollaConfig(
        **_TEXT, num_key_value_heads=2, aligner_num_add_layers=1,
        protein_encoder_config=dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, resampler_num_latents=4, resampler_depth=1,
                                    resampler_heads=2, resampler_dim_head=8),
    )
    processor = T.EvollaProcessor(_esm_tokenizer(), _tokenizer("<|reserved_special_token_0|>"))
    return T.EvollaForProteinText2Text(config), processor


def _florence2():
    config = T.Florence2Config(
        text_config=dict(vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64),
        vision_config=dict(embed_dim=[16, 32], depths=[1, 1], num_heads=[1, 2], num_groups=[1, 2], patch_size=[7, 3],
                           patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], projection_dim=32),
    )
    return T.Florence2ForConditionalGeneration(config), None


def _pix2struct():
    config = T.Pix2StructConfig(
        text_config=dict(vocab_size=128, hidden_size=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2),
        vision_config=dict(hidden_size=32, d_kv=16, d_ff=64, num_hidden_layers=1, num_attention_heads=2,
                           patch_embed_hidden_size=48),
    )
    return T.Pix2StructForConditionalGeneration(config), None


def _pp_formulanet():
    config = T.PPFormulaNetConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, window_size=2, global_attn_indexes=[0], mlp_dim=64,
                           post_conv_in_channels=16, post_conv_out_channels=32, post_conv_mid_channels=16,
                           decoder_hidden_size=32),
        text_config=dict(vocab_size=128, d_model=32, decoder_layers=1, decoder_ffn_dim=64, decoder_attention_heads=2,
                         encoder_layers=1, encoder_attention_heads=2, max_position_embeddings=64),
    )
    return T.PPFormulaNetForConditionalGeneration(config), None


def _udop():
    config = T.UdopConfig(vocab_size=128, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, image_size=32,
                          patch_size=8)
    return T.UdopForConditionalGeneration(config), None


def _vision_encoder_decoder():
    config = T.VisionEncoderDecoderConfig(
        encoder=T.ViTConfig(**_VISION, image_size=32, patch_size=8).to_dict(),
        decoder=T.GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2, add_cross_attention=True,
                             is_decoder=True, bos_token_id=0, eos_token_id=1).to_dict(),
    )
    return T.VisionEncoderDecoderModel(config), None


def _t5gemma2():
    from vlsft.testing.tiny_gemma import build_tiny_gemma3

    processor = build_tiny_gemma3()[1]  # T5Gemma 2 ships a Gemma3Processor with Gemma 3's chat template
    config = T.T5Gemma2Config(
        encoder=dict(text_config=_GEMMA3_TEXT, vision_config=_SIGLIP, mm_tokens_per_image=4), decoder=_GEMMA3_TEXT
    )
    return T.T5Gemma2ForConditionalGeneration(config), processor


def _shieldgemma2():
    from vlsft.testing.tiny_gemma import build_tiny_gemma3

    gemma3 = build_tiny_gemma3()[1]
    processor = T.ShieldGemma2Processor(gemma3.image_processor, gemma3.tokenizer, chat_template=gemma3.chat_template,
                                        image_seq_length=4)
    config = T.ShieldGemma2Config(text_config=dict(_GEMMA3_TEXT, model_type="gemma3_text"), vision_config=_SIGLIP,
                                  mm_tokens_per_image=4, boi_token_index=1, eoi_token_index=2, image_token_index=3)
    # The image-text-to-text class of `shieldgemma2` is Gemma3ForConditionalGeneration, holding ShieldGemma 2's config.
    return T.AutoModelForImageTextToText.from_config(config), processor


def _diffusion_gemma():
    from vlsft.testing.tiny_gemma import build_tiny_gemma4

    processor = build_tiny_gemma4()[1]  # DiffusionGemma ships a Gemma4Processor with Gemma 4's chat template
    config = T.DiffusionGemmaConfig(
        text_config=dict(_GEMMA, sliding_window=16, layer_types=["full_attention"], global_head_dim=16,
                         hidden_size_per_layer_input=0, num_experts=2, top_k_experts=1, moe_intermediate_size=16),
        vision_config=dict(_VISION, model_type="gemma4_vision", num_key_value_heads=2, head_dim=16, patch_size=4,
                           pooling_kernel_size=2, position_embedding_size=64),
        boi_token_id=1, eoi_token_id=2, image_token_id=3, canvas_length=8,
    )
    return T.DiffusionGemmaForBlockDiffusion(config), processor


def _pi0():
    config = T.PI0Config(
        vlm_config=dict(model_type="paligemma", text_config=dict(_GEMMA, model_type="gemma"), vision_config=_SIGLIP,
                        projection_dim=32, image_token_id=127),
        dit_config=dict(_GEMMA, model_type="gemma"), chunk_size=4, max_state_dim=4, max_action_dim=4,
    )
    return T.PI0ForConditionalGeneration(config), None


BUILDERS = {
    "blip": _blip, "blip-2": _blip2, "git": _git, "idefics": _idefics, "instructblip": _instructblip,
    "instructblipvideo": _instructblipvideo, "kosmos-2": _kosmos2, "kosmos-2.5": _kosmos2_5, "fuyu": _fuyu,
    "evolla": _evolla, "florence2": _florence2, "pix2struct": _pix2struct, "pp_formulanet": _pp_formulanet,
    "t5gemma2": _t5gemma2, "udop": _udop, "vision-encoder-decoder": _vision_encoder_decoder, "pi0": _pi0,
    "shieldgemma2": _shieldgemma2, "diffusion_gemma": _diffusion_gemma,
}


def build_tiny_not_chat(model_type: str, seed: int = 0):
    """(model, processor or None) of `model_type`, one of `BUILDERS`: the real model class, random weights drawn from
    `seed`; the processor where the refusal is decided by it (or the Gemma processor the model ships with)."""
    torch.manual_seed(seed)
    return BUILDERS[model_type]()
