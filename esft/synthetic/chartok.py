"""A character-level tokenizer for the synthetic tasks: one token per character, plus the chat specials.

Character tokens keep digits and letters separate, so arithmetic and string tasks stay learnable by a
model of a few million parameters. Special tokens take the ids ``esft.models.toy`` expects (bos 0, eos 1,
pad 2) and the chat template is the library's, so ``esft.workflows`` and ``esft generate`` work unchanged.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from esft.models.tokenizer import SPECIAL_TOKENS, wrap_backend

UNK_TOKEN = "<|unk|>"
# Every character the task generators may write; anything else encodes as <|unk|>.
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " \n.,:;?!+-=*/()[]<>'\"#_"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character tokenizer (deterministic; nothing is trained or downloaded).

    Returns:
        A fast tokenizer with offsets, the library's chat template and ``len(CHARACTERS) + 8`` tokens.

    Example:
        >>> tok = build_char_tokenizer()
        >>> tok.decode(tok("add 12", add_special_tokens=False)["input_ids"])
        'add 12'
    """
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, UNK_TOKEN, *CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return wrap_backend(backend, model_max_length=512, unk_token=UNK_TOKEN)
