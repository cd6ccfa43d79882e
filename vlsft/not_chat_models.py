"""Models transformers loads as image-text-to-text that are not decoder-only chat models, refused when training starts.

transformers' image-text-to-text mapping also holds encoder-decoders, captioning and OCR models, a block-diffusion
model, a robot action model and a protein model; it has an image classifier class for ShieldGemma 2. Assistant-only
chat SFT does not apply to them: there is no assistant turn that the model generates left to right. Without this check
such a model fails with whatever breaks first, or, worse, starts training: T5Gemma 2 and DiffusionGemma ship Gemma
processors with Gemma chat templates, which vlsft's Gemma records would render.

Each refusal is decided by a property where one decides it, and by a model-type table (`NOT_CHAT_MODEL_TYPES`) only
where none does:
- the model class generates no text (`can_generate()` is False: `ShieldGemma2ForImageClassification`, PI0);
- the config says `is_encoder_decoder` (Florence-2, Pix2Struct, PP-FormulaNet, T5Gemma 2, UDOP, VisionEncoderDecoder,
  BLIP-2 with Flan-T5): the answer is the decoder's target, not a turn of one rendered sequence;
- the processor reads no images (Evolla: proteins and text);
- the processor tokenizes the text a second time for a Q-Former (InstructBLIP, InstructBLIP-Video): on a rendered
  conversation that text holds the answer, so the image query would see it;
- the processor has no chat template and none is given (BLIP, BLIP-2, GIT, Kosmos-2, Kosmos-2.5, Fuyu, IDEFICS v1 as
  they ship): a captioning, OCR or prompt-completion model with no turn to learn; a model that does have a chat
  format is trained by giving its template.
ShieldGemma 2 loaded as `Gemma3ForConditionalGeneration` (the mapping's class) is a Gemma 3 chat model and trains.
"""

from __future__ import annotations

from vlsft.generic_family import refuse_processor_outside_chat

# Model types whose config marks nothing that says they are not chat models: (what it is, what to do instead).
# DiffusionGemma's config is a decoder-only Gemma's plus a canvas; PI0's model class generates no text, which decides
# it once loaded, but its config alone must refuse it too (a recipe's dry run reads only the config).
NOT_CHAT_MODEL_TYPES = {
    "diffusion_gemma": (
        "DiffusionGemma is a block-diffusion model: it denoises a whole canvas of tokens at once with bidirectional "
        "attention (`DiffusionGemmaForBlockDiffusion`), so there is no left-to-right next-token loss to mask",
        "train it with its own denoising objective; vlsft has no path for it (for a Gemma chat model, train Gemma 3 "
        "or Gemma 4)",
    ),
    "pi0": (
        "PI0 is a robot action model: it predicts action chunks by flow matching from images, a state and an "
        "instruction (`actions` are its labels); it generates no text",
        "train it on (observation, action) data with its own loss (e.g. LeRobot); vlsft has no path for it",
    ),
}

_SEQ2SEQ_FIX = (
    "fine-tune it as a sequence-to-sequence model: the prompt and image as encoder inputs, the answer as `labels` "
    "(e.g. `processor(images=..., text=prompt, suffix=answer)` where the processor takes a suffix, else the "
    "tokenizer's ids of the answer), with transformers' `Seq2SeqTrainer`"
)


def _name_of(config, processor=None) -> str:
    """The name a refusal gives the model: its config's `model_type`, else its processor's class."""
    return getattr(config, "model_type", None) or type(processor).__name__


def not_chat_model_problem(config, model=None) -> tuple[str, str] | None:
    """(why, what to do instead) where `config` (or `model`, when it is loaded) is that of a model that is not a
    decoder-only chat model, else None."""
    model_type = getattr(config, "model_type", None)
    if model_type in NOT_CHAT_MODEL_TYPES:
        return NOT_CHAT_MODEL_TYPES[model_type]
    can_generate = getattr(model, "can_generate", None)  # every transformers model has it
    if callable(can_generate) and not can_generate():
        return (
            f"{type(model).__name__} generates no text (`can_generate()` is False): a classifier, an action model "
            "or a model without its language-model head, so there is no next-token prediction to train",
            "load a chat model with its head (`AutoModelForImageTextToText`, not `AutoModel`); train a classifier or "
            "an action model with its own head's loss (e.g. with transformers' `Trainer`). ShieldGemma 2 loaded with "
            "`AutoModelForImageTextToText` (a `Gemma3ForConditionalGeneration`) does train with vlsft as a Gemma 3 "
            "chat: its policy prompt as the user turn, `Yes` or `No` as the answer",
        )
    if getattr(config, "is_encoder_decoder", False):
        return (
            "an encoder-decoder (`config.is_encoder_decoder`): the image and prompt go through the encoder and the "
            "answer is the decoder's target, not an assistant turn of one rendered conversation, which is what vlsft "
            "masks",
            _SEQ2SEQ_FIX,
        )
    return None


def not_chat_processor_problem(processor, chat_template_path: str | None) -> tuple[str, str] | None:
    """(why, what to do instead) where `processor` is that of a model vlsft cannot train as a chat model, else None.
    `chat_template_path` is the template the run gives (`VLSFTConfig.chat_template_path`), if any."""
    name = type(processor).__name__
    if getattr(processor, "image_processor", None) is None and getattr(processor, "video_processor", None) is None:
        return (
            f"its processor ({name}) reads no images or videos (its inputs are {_inputs_of(processor)})",
            "train it with a trainer for its own inputs; vlsft trains vision-language chat models",
        )
    if getattr(processor, "qformer_tokenizer", None) is not None:
        return (
            f"its processor ({name}) also tokenizes the text for a Q-Former that reads it with the image; on a "
            "rendered conversation that text holds the answer, so the image query would see what the model must "
            "predict",
            "fine-tune it on (image, instruction, answer) rows with the instruction alone as the Q-Former's text "
            "(`processor(images=..., text=instruction)`, the answer appended to `input_ids` as `labels`), e.g. "
            "with transformers' `Trainer`",
        )
    if not processor.chat_template and not chat_template_path:
        return (
            f"its processor ({name}) has no chat template and none is given, so there is no assistant turn to "
            "learn (as shipped, BLIP, BLIP-2, GIT, Kosmos-2 and Kosmos-2.5 are captioning, grounding or OCR models "
            "prompted with plain text)",
            "fine-tune it on (image, text) pairs with transformers' `Trainer` (the processor's `input_ids` as "
            "`labels`, the prompt masked); or, if the model does have a chat format, give its template with "
            "`chat_template_path` (a recipe's `training.chat_template_path`)",
        )
    return None


def _inputs_of(processor) -> str:
    """The processor's sub-processors and tokenizers, named for the refusal."""
    attributes = getattr(processor, "get_attributes", lambda: [])()
    return ", ".join(f"`{attribute}`" for attribute in attributes) or "text only"


def refuse_not_chat_model(config, processor=None, chat_template_path: str | None = None, model=None) -> None:
    """Raise `ValueError` naming the model type, why it is not a chat model vlsft can train, and what to do instead,
    where `config` (None: unknown yet), `model` (None: not loaded yet; a PEFT model's base model) or `processor`
    (None: not loaded yet) says so; a prefix-LM's processor (PaliGemma's) and one that builds its model's prompt itself
    (GOT-OCR 2.0's), which have no chat template either, get their own, more precise refusal
    (`refuse_processor_outside_chat`)."""
    problem = not_chat_model_problem(config, model) if config is not None else None
    if problem is None and processor is not None:
        refuse_processor_outside_chat(processor)
        problem = not_chat_processor_problem(processor, chat_template_path)
    if problem is not None:
        why, fix = problem
        raise ValueError(
            f"{_name_of(config, processor)}: vlsft trains the assistant turns of decoder-only chat models and "
            f"cannot train this one: {why}. Instead, {fix}."
        )


def config_of(model, trust_remote_code: bool = False, revision: str | None = None):
    """The config of `model`: a model's own, or, for a model given by name, the config file only (no weights)."""
    if isinstance(model, str):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code, revision=revision)
    return getattr(model, "config", None)
