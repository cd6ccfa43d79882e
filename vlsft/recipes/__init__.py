"""Recipes: the YAML sections (`schema`), reading them and checking keys, types and values (`loading`, `typecheck`,
`checks`), the models and datasets built locally by name (`registry`), where a model comes from (`model_source`), the
datasets a recipe names (`datasets`) with their seeded row limits, hold-out and mixture (`mixture`), every part of a
run built from a recipe (`build`), the dry-run plan (`plan`), and how a layout is launched (`layouts`, `launch`)."""
