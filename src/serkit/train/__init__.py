"""Training: the Lightning module, the trainer set-up, one-fold fitting and the cross-validation runner."""
