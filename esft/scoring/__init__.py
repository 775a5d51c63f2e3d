"""Expert scoring: capture the real routing of task tokens and turn it into per-layer scores."""
