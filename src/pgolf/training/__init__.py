"""The training run: the loop, checkpoints, device/torchrun set-up, the run folder, the fast-path check."""
