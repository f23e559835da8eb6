"""Gradient estimators of the ELBO and the IWAE bound, selected by ``objective.gradient``.

Every estimator leaves the objective's value as it is (the same terms, the same bound) and changes
only which gradient autograd takes of it, through two declarations:

- ``stop_q``: log q(z|x) is evaluated with q's parameters held fixed (mu and sigma detached), so the
  encoder's gradient flows only through z = mu + sigma * eps: the score-function term
  E_q[d log q / d phi] (zero in expectation, not in a sample) is dropped (Roeder et al. 2017).
- ``iwae_z(z, log_w)``: the z at which the IWAE bound is differentiated; equal to z in value.

A user's estimator subclasses Reparam and registers itself in GRADIENTS.
"""

from __future__ import annotations

import torch

from ..registry import Registry

GRADIENTS: Registry = Registry("gradient estimator")


@GRADIENTS.register("reparam")
class Reparam:
    """The reparameterization gradient (Kingma & Welling 2014): autograd of the objective as written."""

    stop_q = False
    objectives: tuple[str, ...] | None = None  # the objectives it is defined for (None: any)

    def iwae_z(self, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        return z

    # equal when of one class and settings (the fused engine groups runs by their objective's repr)
    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(vars(self).items()))})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(repr(self))


@GRADIENTS.register("stl")
class StickingTheLanding(Reparam):
    """"Sticking the landing" (Roeder et al. 2017): the path derivative only. Unbiased for the ELBO,
    with zero variance where q equals the posterior; for IWAE biased (Tucker et al. 2019): use dreg."""

    stop_q = True


@GRADIENTS.register("dreg")
class DoublyReparameterized(Reparam):
    """Doubly reparameterized IWAE gradient (Tucker et al. 2019, eq. 7): the encoder's gradient is
    sum_i w~_i^2 d log w_i / d z_i dz_i / dphi, with w~ the normalized importance weights and log w_i
    taken with q's parameters fixed; the decoder's (and the prior's) is IWAE's own, sum_i w~_i
    d log w_i. Done by differentiating the bound at z' = z + w~ (z - z) (stopped): z' equals z, and
    its gradient into z is scaled by w~_i, so the bound's w~_i becomes w~_i^2 on the path through z."""

    stop_q = True
    objectives = ("iwae",)

    def iwae_z(self, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(log_w.detach(), dim=0).unsqueeze(-1)  # (K, B, 1): over the K samples
        fixed = z.detach()
        return fixed + w * (z - fixed)
