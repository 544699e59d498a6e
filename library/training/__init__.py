"""The training loop and what it is made of: optimizers, schedulers, noise and loss, saving, logging."""
