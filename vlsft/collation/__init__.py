"""The steps of `vlsft.collator.VisionChatCollator`, one concern per module, each a mixin of the collator:
`rendering` (the template rendered and cut into supervised pieces, tokenized in one call; `RowError`, `RenderedRow`),
`weighting` (per-token weights of the assistant turns), `images` and `videos` (placeholders expanded as the processor
expands them), `template_kwargs` (the template variables of a row)."""
