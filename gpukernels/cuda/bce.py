"""Binary cross-entropy with logits on the GPU: the elementwise-loss kernel with the leaf
``gpukernels._scalar.bce_with_logits`` (``param``: the positive weight)."""

from .. import _scalar
from ._elementwise_loss import loss_and_grad_launcher

loss_and_grad, ptx_signatures = loss_and_grad_launcher(_scalar.bce_with_logits)
