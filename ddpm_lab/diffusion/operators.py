"""Linear degradation operators A with their Moore-Penrose pseudo-inverse A^+, for linear inverse
problems y = A x + n (DDNM, Wang et al. 2023, Sec. 2.2: the range-null space decomposition
x = A^+ A x + (I - A^+ A) x).

Each operator maps images (N, C, H, W) to measurements and back:
- `Identity`: A = I (denoising), y has the image's shape;
- `Masked`: A keeps the known pixels (inpainting), y is (N, C, K), the K known pixels of each
  channel; A^+ puts them back and leaves zeros elsewhere;
- `AveragePool`: A = k x k average pooling (super-resolution by k), y is (N, C, H/k, W/k);
  A^+ is nearest upsampling by k, the pseudo-inverse (A A^T = I / k^2, so A^+ = A^T (A A^T)^-1
  = k^2 A^T, which copies each value over its block).

All three satisfy A A^+ = I, so A^+ A is the orthogonal projection onto A's row space (the
"range" part of DDNM's decomposition) and A (A^+ y + (I - A^+ A) x) = y for any x. Every
non-zero singular value of these operators is the same number, `singular_value` (1, 1, 1/k):
the measurement noise n ~ N(0, sigma_y^2 I) reaches the range part as A^+ n with standard
deviation sigma_y / singular_value along each range direction (DDNM+ noise-aware scaling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm_lab.errors import UserError

Tensor = torch.Tensor


class LinearOperator:
    """A linear operator A on images with its pseudo-inverse, A A^+ = I."""

    singular_value: float = 1.0

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y, an image."""
        raise NotImplementedError

    def range_part(self, x: Tensor) -> Tensor:
        """A^+ A x: the orthogonal projection of x onto A's row space."""
        return self.pinv(self.A(x))

    def null_part(self, x: Tensor) -> Tensor:
        """(I - A^+ A) x: the part of x that A does not see."""
        return x - self.range_part(x)

    def consistent(self, x: Tensor, y: Tensor) -> Tensor:
        """A^+ y + (I - A^+ A) x: x with its range part replaced by y's (DDNM, Sec. 3.1), so that
        A of the result is y."""
        return self.pinv(y) + self.null_part(x)

    def shown(self, y: Tensor) -> Tensor:
        """y as an image to look at (A^+ y: upsampled, zero-filled, or y itself)."""
        return self.pinv(y)


class Identity(LinearOperator):
    """A = I: the measurement is the (noisy) image itself."""

    def A(self, x: Tensor) -> Tensor:
        return x

    def pinv(self, y: Tensor) -> Tensor:
        return y


class Masked(LinearOperator):
    """A keeps the pixels where `known` (a (H, W) bool mask) is True, in every channel."""

    def __init__(self, known: Tensor):
        if known.ndim != 2 or known.dtype != torch.bool:
            raise ValueError("known must be a (H, W) bool mask")
        self.known = known
        self.index = known.flatten().nonzero().squeeze(1)

    def A(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.flatten(2)[..., self.index.to(x.device)]

    def pinv(self, y: Tensor) -> Tensor:
        h, w = self.known.shape
        out = y.new_zeros(*y.shape[:2], h * w)
        out[..., self.index.to(y.device)] = y
        return out.reshape(*y.shape[:2], h, w)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != tuple(self.known.shape):
            raise UserError(f"mask: a {tuple(self.known.shape)} mask for images of size {tuple(x.shape[-2:])}; "
                            f"give a mask of the image size")


class AveragePool(LinearOperator):
    """A = k x k average pooling; A^+ = nearest upsampling by k."""

    def __init__(self, factor: int):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise UserError(f"factor={factor!r} must be an integer >= 1")
        self.factor = factor
        self.singular_value = 1.0 / factor

    def check_size(self, size: tuple[int, ...], key: str = "factor") -> None:
        """The factor must divide the image's height and width."""
        if any(s % self.factor for s in size):
            raise UserError(f"{key}={self.factor} does not divide the image size {'x'.join(map(str, size))}; "
                            f"choose a factor that divides it")

    def A(self, x: Tensor) -> Tensor:
        self.check_size(tuple(x.shape[-2:]))
        return F.avg_pool2d(x, self.factor)

    def pinv(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)
