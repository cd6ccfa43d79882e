"""Rows and what they point at: conversation rows and their images (`rows`), videos (`video`), other dataset
formats converted on load (`formats`), the checks every row passes before training (`validation`, which checks
datasets with `row_checker`, `message_checks` and `media_checks`, caches verdicts under `validation_cache`'s
fingerprint and reports through `validation_report`), and the rows as the trainer reads them, with their dataset
indices (`training_rows`)."""
