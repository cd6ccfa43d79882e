"""Test fixtures, never imported by the core: tiny random models of every family with real processor classes
(`tiny_families` builds any by family name; `tiny_qwen3_vl`, `tiny_qwen`, `tiny_gemma`, `tiny_idefics_llava`,
`tiny_tokenizers`), the embedded demo data (`demo_data`), and videos written here (`tiny_video`,
`demo_video`). Recipes name them through `vlsft.recipes.registry` (`tiny-qwen3-vl`, `demo-shapes`)."""
