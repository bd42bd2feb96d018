"""Losses: one small module per loss, all called as ``loss(out, batch)``; see :mod:`serkit.losses.base`."""

from serkit.losses.base import Objective, available_losses, build_loss, register_loss

__all__ = ["Objective", "available_losses", "build_loss", "register_loss"]
