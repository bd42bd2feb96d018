"""Losses: one small module per loss, all called as ``loss(out, batch)``; see :mod:`serkit.losses.base`."""

from serkit.losses.base import register_loss
from serkit.losses.objective import Objective, available_losses, build_loss, loss_class

__all__ = ["Objective", "available_losses", "build_loss", "loss_class", "register_loss"]
