"""Text generation with or without an adapter, rendering chat prompts through the model's template."""

from __future__ import annotations

import torch
from torch import nn

from esft.data.tokenize import render_chat


def encode_prompt(tokenizer, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt: chat messages (or a plain string as one user turn) with the reply header."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(text, add_special_tokens=not has_template)["input_ids"]


@torch.inference_mode()
def generate_ids(
    model: nn.Module,
    input_ids: list[int],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    eos_token_id: int | list[int] | None = None,
    seed: int | None = None,
) -> list[int]:
    """New token ids after ``input_ids`` (greedy when ``temperature`` is 0); stops at any ``eos_token_id``."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    pad = eos_token_id[0] if isinstance(eos_token_id, list) else eos_token_id  # any stop id pads finished rows
    kwargs = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id,
              "pad_token_id": pad}
    if temperature > 0:
        kwargs["temperature"] = temperature
        if seed is not None:
            torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out[0, len(input_ids):].tolist()


def generate_text(model: nn.Module, tokenizer, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
    """The model's reply to ``prompt``, special tokens removed."""
    stop = sorted(stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
    new = generate_ids(model, encode_prompt(tokenizer, prompt), max_new_tokens=max_new_tokens,
                       temperature=temperature, eos_token_id=stop or None)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def stop_token_ids(tokenizer, generation_config=None) -> frozenset[int]:
    """The token ids that end a reply, for every way of generating (``esft generate``, evaluation, serving).

    The union of ``generation_config.eos_token_id`` (an int or a list), the chat template's end-of-turn
    token and the tokenizer's EOS: a model stops at whichever its training taught it to emit.

    >>> stop_token_ids(tokenizer, model.generation_config)  # doctest: +SKIP
    frozenset({1, 6})
    """
    ids: set[int] = set()
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    end_of_turn = end_of_turn_id(tokenizer)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    return frozenset(ids)


_SENTINEL = "esftsentinelreply"


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message (``None`` if it writes none).

    Found by rendering a reply and reading what follows it, so it works for any template (``<|im_end|>``,
    ``<|eot_id|>``, the toy's ``<|end|>``), not one hard-coded name.
    """
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = render_chat(tokenizer, messages, add_generation_prompt=False)
    except Exception:  # a template that refuses this conversation has no end-of-turn token we can read
        return None
    start = text.find(_SENTINEL)
    after = text[start + len(_SENTINEL):].lstrip() if start >= 0 else ""
    if not after:
        return None
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", ()))
    return ids[0] if ids and ids[0] in special else None
