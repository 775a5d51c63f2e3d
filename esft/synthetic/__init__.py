"""Synthetic chat tasks, a character tokenizer and the toy MoE pretrained on them (``esft toy-model --pretrain``)."""
