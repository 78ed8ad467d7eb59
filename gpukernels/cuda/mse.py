"""Squared error on the GPU: the elementwise-loss kernel with the leaf
``gpukernels._scalar.squared_error``."""

from .. import _scalar
from ._elementwise_loss import loss_and_grad_launcher

loss_and_grad, ptx_signatures = loss_and_grad_launcher(_scalar.squared_error)
