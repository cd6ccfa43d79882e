"""Recipes: the YAML sections (`schema`), reading and checking them (`loading`, `typecheck`), the models and
datasets built locally by name (`registry`), the datasets a recipe names (`datasets`) with their seeded row limits,
hold-out and mixture (`mixture`), every part of a run built from a recipe (`build`), the dry-run plan (`plan`), and
how a layout is launched (`layouts`, `launch`)."""
