"""AutoencoderModule: stage 1 of latent diffusion, training diffusers' AutoencoderKL on images (or
clips, frame by frame) or Wan 2.1's causal video AutoencoderKLWan on clips (N, C, F, H, W).

Loss (Rombach et al. 2022, Sec. 3 and App. G, without the perceptual and adversarial terms):
the reconstruction error of a latent drawn from the encoder's posterior, L1 or MSE averaged over
pixels, plus `kl_weight` times KL(q(z | x) || N(0, I)) summed over the latent and averaged over
the batch. Validation reconstructs from the posterior mean and logs val/psnr (per image or clip,
then averaged; data in [-1, 1], so the peak-to-peak range is 2) and a grid of originals above their
reconstructions (clips: each clip's frames in a row, its reconstruction in the row below).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics.image import PeakSignalNoiseRatio

from ddpm_lab.autoencoders import decode_latents, kl_per_example, posterior
from ddpm_lab.data.batch import Batch
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.modules.base import RunModule
from ddpm_lab.viz import clip_rows, log_grid, save_grid

RECONSTRUCTION = {"l1": F.l1_loss, "mse": F.mse_loss}


class AutoencoderModule(RunModule):
    kind = "autoencoder"

    def __init__(self, vae: dict, data_info: dict, optim: dict | None = None, reconstruction: str = "l1",
                 kl_weight: float = 1e-6, num_logged: int = 8):
        super().__init__(optim)
        if reconstruction not in RECONSTRUCTION:
            raise choice_error("autoencoder.reconstruction", reconstruction, tuple(RECONSTRUCTION))
        if kl_weight < 0:
            raise UserError(f"autoencoder.kl_weight={kl_weight} must be >= 0")
        self.save_hyperparameters()
        self.model = instantiate(vae, _convert_="all")     # the AutoencoderKL(Wan) of the `vae` preset
        self.image_shape = tuple(data_info["image_shape"])
        self.reconstruction, self.kl_weight, self.num_logged = reconstruction, kl_weight, num_logged
        self.val_psnr = PeakSignalNoiseRatio(data_range=2.0, dim=tuple(range(1, len(self.image_shape) + 1)))
        self._shown: torch.Tensor | None = None
        self._nrow = 1

    def trainable(self) -> torch.nn.Module:
        return self.model

    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, KL per image or clip) through a posterior sample (training) or its mean."""
        dist = posterior(self.model, x)
        z = dist.sample() if sample else dist.mode()
        return decode_latents(self.model, z), kl_per_example(dist)

    def losses(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, dict]:
        rec, kl = self.reconstruct(x, sample)
        rec_loss = RECONSTRUCTION[self.reconstruction](rec, x)
        loss = rec_loss + self.kl_weight * kl.mean()
        return loss, {"rec": rec_loss, "kl": kl.mean(), "reconstruction": rec}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x = batch.image
        loss, parts = self.losses(x, sample=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        self.log_dict({"train/rec": parts["rec"], "train/kl": parts["kl"]}, on_step=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x = batch.image
        loss, parts = self.losses(x, sample=False)
        self.val_psnr.update(parts["reconstruction"].clamp(-1, 1), x)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log("val/kl", parts["kl"], batch_size=len(x), sync_dist=True)
        if batch_idx == 0:
            shown = (x[:self.num_logged], parts["reconstruction"][:self.num_logged].clamp(-1, 1))
            self._shown, self._nrow = clip_rows(*shown) if x.dim() == 5 else (torch.cat(shown), len(shown[0]))
            self._shown = self._shown.detach().float().cpu()

    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.val_psnr.compute(), prog_bar=True, sync_dist=True)
        self.val_psnr.reset()
        if self._shown is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        out = Path(self.run_info.get("output_dir") or self.trainer.default_root_dir) / "reconstructions"
        save_grid(self._shown, out / f"epoch{self.current_epoch:04d}.png", nrow=self._nrow, upscale=4)
        caption = ("each clip's frames in a row, its reconstruction below" if len(self.image_shape) == 4
                   else "originals (top), reconstructions (bottom)")
        log_grid(self.trainer.loggers, "reconstructions", self._shown, self.global_step, nrow=self._nrow, upscale=4,
                 caption=caption)
