"""Model-side building blocks: finding MoE layers in transformers models, family facts and tiny toy models."""
