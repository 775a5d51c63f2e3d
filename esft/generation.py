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
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """New token ids after ``input_ids`` (greedy when ``temperature`` is 0)."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    kwargs = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id,
              "pad_token_id": eos_token_id}
    if temperature > 0:
        kwargs["temperature"] = temperature
        if seed is not None:
            torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out[0, len(input_ids):].tolist()


def generate_text(model: nn.Module, tokenizer, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
    """The model's reply to ``prompt``, special tokens removed."""
    new = generate_ids(model, encode_prompt(tokenizer, prompt), max_new_tokens=max_new_tokens,
                       temperature=temperature, eos_token_id=_stop_id(tokenizer))
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def _stop_id(tokenizer) -> int | None:
    """The end-of-turn token when the template has one (``<|end|>``), else EOS."""
    end = tokenizer.convert_tokens_to_ids("<|end|>") if "<|end|>" in tokenizer.get_vocab() else None
    return end if end is not None else tokenizer.eos_token_id
