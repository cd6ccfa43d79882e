"""Tiny Gemma 3n and Idefics2 models on the generic exact path, and a tiny PaliGemma, which vlsft refuses
(`vlsft.testing.tiny_generic` holds the other families and the shared tokenizer helpers): each family's real model
class built from its config class with random weights, and its real processor class with a tokenizer trained
in-process.

Gemma 3n's vision tower is timm's MobileNet-v5 (`TimmWrapperModel`, created with `pretrained=False`: no weights are
fetched from a hub); the `timm` package must be installed. The tiny tower is the same encoder class with a 4-block
architecture (an edge-residual block, a universal inverted residual, a Mobile-MQA attention block) instead of the
checkpoint's ~80 blocks.
"""

from __future__ import annotations

from transformers import (
    Gemma3nAudioFeatureExtractor,
    Gemma3nConfig,
    Gemma3nForConditionalGeneration,
    Gemma3nProcessor,
    GemmaTokenizer,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessor,
    Idefics2Processor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
)

from vlsft.testing.tiny_build import (
    HIDDEN,
    VISION_ENCODER_SIZES,
    instantiate,
    language_model_sizes,
    mistral_text_config,
)
from vlsft.testing.tiny_tokenizers import _train_sentencepiece_style, train_mistral_tokenizer

# -- Gemma 3n ------------------------------------------------------------------------------------------------------

# Gemma 3n's chat template as its instruction-tuned checkpoints ship it (google/gemma-3n-E4B-it's
# tokenizer_config.json; the same text appears in the public conversions and runtimes that embed it): Gemma 3's turn
# format, the system prompt folded into the first user turn, roles that must alternate (so tool messages are refused
# by the template itself), and media written as their soft tokens, which the processor expands.
GEMMA3N_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# The media tokens in the order of their ids, as in the checkpoint: the begin markers are text-vocabulary tokens
# (255,999 and 256,000), while the end-of-image marker and the image soft token open the vision embedder's range
# (from 262,144) and the end-of-audio marker and the audio soft token the audio embedder's (from 262,272): the model
# embeds every id at or past `vision_config.vocab_offset` with those embedders, not the text table.
GEMMA3N_MEDIA_TOKENS = {
    "boi_token": "<start_of_image>",
    "boa_token": "<start_of_audio>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
    "eoa_token": "<end_of_audio>",
    "audio_token": "<audio_soft_token>",
}
# A 4-block MobileNet-v5 (timm's block notation): an edge residual, then a stage of a universal inverted residual, a
# Mobile-MQA block and the inverted residual that ends every stage of the checkpoint's encoder.
_MOBILENET_V5_BLOCKS = [
    ["er_r1_k3_s2_e2_c8"],
    ["uir_r1_a3_k5_s2_e2_c16", "mqa_r1_k3_h2_v2_s1_d8_c16", "uir_r1_a0_k0_s1_e2_c16"],
]
_GEMMA3N_SOFT_TOKENS = 4  # the encoder's fusion adapter pools a 32 px image to 2x2


def train_gemma3n_tokenizer() -> GemmaTokenizer:
    """A `GemmaTokenizer` (the class Gemma 3n checkpoints load) with Gemma 3n's turn tokens and media attributes, the
    media tokens last so that the vision and audio ranges close the vocabulary, as in the checkpoint."""
    vocab, merges = _train_sentencepiece_style(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    turns = ["<start_of_turn>", "<end_of_turn>"]
    vocab = {**vocab, **{token: len(vocab) + i for i, token in enumerate(turns)}}
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, extra_special_tokens=GEMMA3N_MEDIA_TOKENS
    )
    tokenizer.add_special_tokens({"additional_special_tokens": turns}, replace_extra_special_tokens=False)
    return tokenizer


def build_tiny_gemma3n(seed: int = 0, hidden_size: int = HIDDEN):
    """Gemma 3n: `Gemma3nForConditionalGeneration` (a MobileNet-v5 vision tower through timm, a USM-style conformer
    audio tower, a Gemma 3n language model with AltUp, LAuReL, per-layer embeddings and activation sparsity) +
    `Gemma3nProcessor`, with `GEMMA3N_TEMPLATE`. A 32 px image is 4 soft tokens; audio is not trained (refused by
    row on the generic path), but the model has its audio tower, as every checkpoint does."""
    from timm.models._efficientnet_builder import decode_arch_def  # timm builds the vision tower anyway

    tokenizer = train_gemma3n_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    processor = Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(),
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}, do_normalize=False),
        tokenizer=tokenizer,
        chat_template=GEMMA3N_TEMPLATE,
        audio_seq_length=4,
        image_seq_length=_GEMMA3N_SOFT_TOKENS,
    )
    vision_offset, audio_offset = ids("<end_of_image>"), ids("<end_of_audio>")
    config = Gemma3nConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            vocab_size_per_layer_input=vision_offset,  # the per-layer table covers the text ids only
            hidden_size_per_layer_input=8,
            **language_model_sizes(hidden_size),
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=16,
            num_kv_shared_layers=0,
            laurel_rank=4,
            activation_sparsity_pattern=[0.95, 0.0],  # the checkpoint's first layers keep only the top 5%
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=[tokenizer.eos_token_id, ids("<end_of_turn>")],
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(
            architecture="mobilenetv5_300m_enc",
            model_args=dict(
                block_args=decode_arch_def(_MOBILENET_V5_BLOCKS), stem_size=8, msfa_output_resolution=2
            ),
            vocab_size=audio_offset - vision_offset,
            vocab_offset=vision_offset,
        ),
        audio_config=dict(
            hidden_size=16,
            vocab_size=len(tokenizer) - audio_offset,
            vocab_offset=audio_offset,
            conf_num_attention_heads=2,
            conf_num_hidden_layers=1,
            sscp_conv_channel_size=[8, 4],
        ),
        vision_soft_tokens_per_image=_GEMMA3N_SOFT_TOKENS,
        audio_soft_tokens_per_image=4,
        boi_token_id=ids("<start_of_image>"),
        eoi_token_id=vision_offset,
        image_token_id=tokenizer.image_token_id,
        boa_token_id=ids("<start_of_audio>"),
        eoa_token_id=audio_offset,
        audio_token_id=tokenizer.audio_token_id,
    )
    return instantiate(Gemma3nForConditionalGeneration, config, processor, seed)


# -- Idefics2 ------------------------------------------------------------------------------------------------------

# Idefics2's chat template as HuggingFaceM4/idefics2-8b(-chatty) ship it: Idefics3's format without a written BOS
# (its Mistral tokenizer adds `<s>`), each turn `Role:` + content + `<end_of_utterance>` and a newline.
IDEFICS2_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_IDEFICS2_LATENTS = 4  # the perceiver resampler's latents: the image tokens of each image


def build_tiny_idefics2(seed: int = 0, hidden_size: int = HIDDEN):
    """Idefics2: `Idefics2ForConditionalGeneration` (a SigLIP tower, a perceiver-resampler connector, a Mistral
    language model) + `Idefics2Processor` (a Mistral-style `LlamaTokenizer`), with `IDEFICS2_TEMPLATE`. An image is
    resized to 32 px (8 px patches) and resampled to 4 latents between `<fake_token_around_image>` markers. Its
    processor expands placeholders with a `__call__` of its own, which reports no replacement offsets and rewrites
    the text around images (a space after each image followed by a word)."""
    tokenizer = train_mistral_tokenizer()
    processor = Idefics2Processor(  # adds `<fake_token_around_image>` and `<end_of_utterance>` to the tokenizer
        image_processor=Idefics2ImageProcessor(
            size={"shortest_edge": 32, "longest_edge": 32}, do_image_splitting=False
        ),
        tokenizer=tokenizer,
        image_seq_len=_IDEFICS2_LATENTS,
        chat_template=IDEFICS2_TEMPLATE,
    )
    end_of_utterance = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    text_config = mistral_text_config(tokenizer, hidden_size)
    config = Idefics2Config(
        text_config={**text_config, "eos_token_id": [tokenizer.eos_token_id, end_of_utterance]},
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=32, patch_size=8),
        perceiver_config=dict(
            hidden_size=hidden_size, resampler_n_latents=_IDEFICS2_LATENTS, resampler_depth=1, resampler_n_heads=2,
            resampler_head_dim=16, num_key_value_heads=1,
        ),
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
    )
    return instantiate(Idefics2ForConditionalGeneration, config, processor, seed)


# -- PaliGemma (refused) -------------------------------------------------------------------------------------------


def build_tiny_paligemma(seed: int = 0, hidden_size: int = HIDDEN):
    """PaliGemma: `PaliGemmaForConditionalGeneration` (SigLIP, a linear projector, a Gemma language model) +
    `PaliGemmaProcessor`, without a chat template, as the checkpoints ship. A prefix-LM that vlsft refuses
    (`vlsft.generic_family.PREFIX_LM_PROCESSORS`): built to test that refusal."""
    vocab, merges = _train_sentencepiece_style(["<pad>", "<eos>", "<bos>", "<unk>"])
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges)
    processor = PaliGemmaProcessor(  # adds `<image>` and the 1,152 location and segmentation tokens
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16),
        tokenizer=tokenizer,
    )
    config = PaliGemmaConfig(
        text_config=dict(
            model_type="gemma", vocab_size=len(tokenizer), **language_model_sizes(hidden_size),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ),
        vision_config=dict(**VISION_ENCODER_SIZES, image_size=32, patch_size=8, projection_dim=hidden_size),
        image_token_id=processor.image_token_id,
        projection_dim=hidden_size,
    )
    return instantiate(PaliGemmaForConditionalGeneration, config, processor, seed)
