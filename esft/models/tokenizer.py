"""The tiny offline byte-level BPE tokenizer (with a chat template) that every toy model ships with."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
END_TOKEN = "<|end|>"

# The BPE trainer gives special tokens the first ids, in this order: <|bos|> = 0, <|eos|> = 1, ...
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
    SYSTEM_TOKEN,
    END_TOKEN,
)

# Prefix-stable: rendering messages[:i] with add_generation_prompt=True is a prefix of messages[:i+1].
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MODEL_MAX_LENGTH = 2048

_PROSE = (
    "The quick brown fox jumps over the lazy dog. A mixture of experts routes each token to a few experts.",
    "Expert-specialized fine-tuning trains only the experts that matter most for a task.",
    "The user asks a question and the assistant answers it in a short, clear and friendly way.",
    "Translate the sentence into French. Summarize the following paragraph in one sentence.",
    "Once upon a time there was a small model that learned to add numbers and write code.",
    "You are a helpful assistant. Think step by step, then give the final answer.",
    "Mathematics is the language of patterns; code is the language of machines; prose is for people.",
    "Q: What is the capital of France? A: Paris. Q: How many legs does a spider have? A: Eight.",
)

_CODE = (
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "import torch\nx = torch.zeros(4, 8)\ny = x.sum(dim=-1)\n",
    "class Expert(nn.Module):\n    def forward(self, x):\n        return self.down(self.act(self.up(x)))\n",
    'if __name__ == "__main__":\n    main()\n',
    "SELECT name, score FROM results WHERE score > 0.5 ORDER BY score DESC;\n",
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n',
)


def default_corpus() -> Iterator[str]:
    """Yield the small built-in English / arithmetic / code corpus (the same lines on every call).

    Returns:
        An iterator over text lines; arithmetic lines are generated from fixed ranges, so no randomness.
    """
    yield from _PROSE
    yield from _CODE
    for a in range(0, 60, 3):
        for b in range(1, 40, 7):
            yield f"{a} + {b} = {a + b}. {a} * {b} = {a * b}. {a + b} - {b} = {a}."
    yield from (f"<|{role}|>\n{text}<|end|>" for role in ("user", "assistant") for text in _PROSE[:4])


def special_token_ids() -> dict[str, int]:
    """Return the id of every special token, as ``build_tokenizer`` assigns them.

    Returns:
        A mapping ``token -> id``; ids are the positions in ``SPECIAL_TOKENS`` (the trainer puts them first).
    """
    return {token: index for index, token in enumerate(SPECIAL_TOKENS)}


def _train_bpe(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``corpus``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # A list, not a generator: the trainer then sees the lines in one fixed order.
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return tokenizer


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer locally and wrap it for transformers.

    Any text encodes and decodes losslessly (all 256 byte symbols are in the base alphabet). The result has
    ``bos``/``eos``/``pad`` tokens, the chat roles as special tokens, a prefix-stable chat template and
    offset mappings; it saves with ``save_pretrained`` and reloads offline with ``AutoTokenizer``.

    Args:
        corpus: training text, one string per line or document; defaults to ``default_corpus()``.
        vocab_size: the largest vocabulary to learn (the corpus may yield fewer merges). At least
            ``256 + len(SPECIAL_TOKENS)``.

    Returns:
        A fast tokenizer; the same corpus and ``vocab_size`` always give the same vocabulary.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the byte alphabet and the special tokens.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.decode(tok("héllo 🙂").input_ids)
        'héllo 🙂'
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"`vocab_size` must be >= {minimum} (256 bytes + special tokens), got {vocab_size}")
    backend = _train_bpe(default_corpus() if corpus is None else corpus, vocab_size)
    return wrap_backend(backend, model_max_length=MODEL_MAX_LENGTH)


def wrap_backend(backend: Tokenizer, *, model_max_length: int, **special: str) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over ``backend`` with our special tokens and prefix-stable chat template.

    ``special`` adds more special tokens by role (e.g. ``unk_token="<unk>"``).
    """
    roles = [token for token in SPECIAL_TOKENS if token not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=roles,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        **special,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
