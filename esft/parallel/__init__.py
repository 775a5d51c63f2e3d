"""Multi-process training with torch.distributed (data parallel over the trainable experts)."""
