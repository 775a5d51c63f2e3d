"""Training any method's model: the one loop, its objective, optimizer, checkpoints and progress events."""
