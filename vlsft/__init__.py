"""vlsft: exact assistant-only fine-tuning of vision-language models on top of TRL."""

from vlsft.config import VLSFTConfig

__version__ = "0.1.0"
__all__ = ["VLSFTConfig", "VLSFTTrainer", "__version__", "inspect"]


def __getattr__(name):
    # The trainer imports torch, transformers and TRL's trainer stack; importing it lazily keeps `vlsft --help`,
    # recipe validation and `--dry-run` fast.
    if name == "VLSFTTrainer":
        from vlsft.trainer import VLSFTTrainer

        return VLSFTTrainer
    if name == "inspect":
        from vlsft.inspection import inspect  # the command itself is `vlsft.cli.inspect.main`

        return inspect
    raise AttributeError(name)
