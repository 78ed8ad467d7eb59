"""Huber loss on the CPU (leaf ``gpukernels._scalar.huber``, ``param`` the delta):
grad_i = g_i clip(p_i - t_i, -delta, delta)."""

from gpukernels import _scalar

from ._elementwise_loss import loss_and_grad_launcher

loss_and_grad = loss_and_grad_launcher(_scalar.huber)
