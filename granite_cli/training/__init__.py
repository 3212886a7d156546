"""The shared training core: the loop, losses, schedules, distributed setup and the training-stage skeleton."""

IGNORE = -100  # a label that carries no loss (prompt tokens, padding, masked turns); torch-free, for data modules
