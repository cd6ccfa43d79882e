"""Rows and what they point at: conversation rows and their images (`rows`), videos (`video`), other dataset
formats converted on load (`formats`), the checks every row passes before training (`validation`), and the rows as
the trainer reads them, with their dataset indices (`training_rows`)."""
