"""Squared error on the CPU (leaf ``gpukernels._scalar.squared_error``):
grad_i = g_i 2 (p_i - t_i)."""

from gpukernels import _scalar

from ._elementwise_loss import loss_and_grad_launcher

loss_and_grad = loss_and_grad_launcher(_scalar.squared_error)
