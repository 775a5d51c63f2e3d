"""Training data: JSONL formats and validation, tokenization with loss masks, and batching.

``formats`` is torch-free (the service validates uploads with it); ``tokenize`` needs a tokenizer and
``batching`` needs torch, so nothing is imported here: import the submodule you need.
"""
