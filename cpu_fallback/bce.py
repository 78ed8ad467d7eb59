"""Binary cross-entropy with logits on the CPU (leaf ``gpukernels._scalar.bce_with_logits``,
``param`` the positive weight): grad_i = g_i w_i (lw_i sigma(z_i) - pw_i y_i)."""

from gpukernels import _scalar

from ._elementwise_loss import loss_and_grad_launcher

loss_and_grad = loss_and_grad_launcher(_scalar.bce_with_logits)
