"""Training only the selected experts: freezing/splitting, optimizer, checkpoints, the loop, progress."""
