"""The full fine-tuning method's config."""

from __future__ import annotations

from dataclasses import dataclass

from esft.errors import ConfigError
from esft.options import option


@dataclass
class FFTConfig:
    """Full fine-tuning: every parameter trains, or every parameter but the embeddings.

    >>> FFTConfig().train_embeddings
    True
    """

    train_embeddings: bool = option(True, "also train the input embeddings and the output head", section="method",
                                    expose=("api", "worker"))

    def __post_init__(self) -> None:
        if not isinstance(self.train_embeddings, bool):
            raise ConfigError(f"`train_embeddings` must be true or false, got {self.train_embeddings!r}",
                              param="train_embeddings")
