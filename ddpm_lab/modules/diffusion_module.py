"""DiffusionModule: the Lightning wrapper around the diffusion math (thin by design).

It is built from plain config dicts (net, schedule, diffusion, sampler, optim, data_info, guidance,
and `latent`, the frozen autoencoder of latent diffusion) and saves them as hyper-parameters, so
`DiffusionModule.load_from_checkpoint(path)` rebuilds the network, schedule and sampler defaults
with nothing else. With Lightning's EMAWeightAveraging the checkpoint's `state_dict` holds the EMA
weights, which is what sampling should use.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate

from ddpm_lab.checkpoint_io import CHECKPOINT_KEY, checkpoint_file, read_checkpoint
from ddpm_lab.data.batch import Batch
from ddpm_lab.diffusion.first_frame import FrameConditioned, frame_condition, keep_first_frames
from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.guidance import Guidance, drop_condition
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers import Sampler, Trajectory
from ddpm_lab.errors import UserError
from ddpm_lab.modules.base import RunModule
from ddpm_lab.modules.sampling_inputs import SamplingInputs

__all__ = ["DiffusionModule", "build_diffusion"]



def build_diffusion(schedule: dict, diffusion: dict) -> GaussianDiffusion | FlowMatching:
    """The process of `diffusion` (DDPM's GaussianDiffusion on `schedule`, or flow matching, which
    has no noise schedule)."""
    if "schedule" not in inspect.signature(get_class(diffusion["_target_"])).parameters:
        return instantiate(diffusion, _convert_="all")
    return instantiate(diffusion, schedule=instantiate(schedule), _convert_="all")


class DiffusionModule(SamplingInputs, RunModule):
    kind = "diffusion"

    def __init__(self, net: dict, schedule: dict, diffusion: dict, sampler: dict,
                 data_info: dict, optim: dict | None = None, guidance: dict | None = None,
                 latent: dict | None = None, image_to_video: dict | None = None):
        super().__init__(optim)
        self.save_hyperparameters()
        self.net = instantiate(net, _convert_="all")
        self.diffusion = build_diffusion(schedule, diffusion)
        self.sampler: Sampler = instantiate(sampler, _convert_="all")
        self.image_shape = tuple(data_info["image_shape"])
        # Latent diffusion: `latent` describes a frozen autoencoder (config, kind, scale, shift, source,
        # cached; its weights are in the checkpoint; no kind: an image AutoencoderKL); the diffusion
        # runs on its scaled latents, batches hold the cached posterior moments (or images, `cached: false`).
        self.autoencoder = None
        self.sample_shape = self.image_shape
        if latent:
            from ddpm_lab.autoencoders import LatentAutoencoder
            self.autoencoder = LatentAutoencoder(latent["config"], latent["scale"], latent.get("shift", 0.0),
                                                 latent.get("source", ""), latent.get("kind"))
            self.latents_cached = bool(latent.get("cached", True))
            self.sample_shape = self.autoencoder.latent_shape(self.image_shape)
        self.guidance: Guidance = instantiate(guidance, _convert_="all") if guidance else Guidance()
        # Image-to-video (Wan 2.1 I2V): the first frame, given with probability p_first_frame in
        # training, goes in beside x_t (diffusion/first_frame.py); None: text-to-video only.
        self.p_first_frame = float(image_to_video["p_first_frame"]) if image_to_video else None

    @property
    def is_video(self) -> bool:
        """Clips (C, F, H, W) rather than images (C, H, W) or points."""
        return len(self.image_shape) == 4

    @property
    def fps(self) -> float:
        """Playback frames per second of clips: the data's `fps` (4 when it names none)."""
        return float((self.hparams["data_info"].get("data") or {}).get("fps") or 4)

    def trainable(self) -> torch.nn.Module:
        return self.net

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> DiffusionModule:
        """The module a checkpoint file or run folder holds (EMA weights when EMA was on), in eval
        mode: Lightning's load_from_checkpoint, after read_checkpoint's clear errors for a missing,
        unreadable or foreign file and a check that it is not a stage-1 autoencoder."""
        ckpt = read_checkpoint(path)
        if ckpt[CHECKPOINT_KEY].get("kind") == "autoencoder":
            raise UserError(f"ckpt_path={str(path)!r} is a stage-1 autoencoder checkpoint; sample a diffusion "
                            f"checkpoint (stage 2: ddpm-train experiment=shapes_ldm vae.path=<this run>)")
        hparams = ckpt["hyper_parameters"]
        del ckpt                                      # the weights: Lightning reads them below
        module = cls.load_with_hparams(checkpoint_file(path), hparams, map_location=device, weights_only=False)
        return module.to(device).eval()

    # The network is the math's model_fn: called as net(x_t, t, cond); its `null_condition` lets
    # the sampler's Guider run both guidance passes as one batched forward.

    # ----- training -----------------------------------------------------------------------------
    def condition_of(self, batch: Batch, drop: bool) -> torch.Tensor | None:
        """The batch's condition: its `label` or caption `tokens`, replaced by the null condition
        with probability p_uncond when `drop`; None for an unconditional model."""
        if not self.guidance.conditional:
            return None
        if self.guidance.condition == "text":
            cond = self.pad_tokens(batch.tokens)
        else:
            cond = batch.label
        if not drop:
            return cond
        return drop_condition(cond, self.net.null_condition(1, cond.device)[0], self.guidance.p_uncond)

    def pad_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids padded to the text encoder's length."""
        return F.pad(ids, (0, self.net.text_encoder.vocabulary.max_tokens - ids.shape[1]))

    def diffusion_input(self, batch: Batch, sample: bool = True) -> torch.Tensor:
        """What the diffusion runs on: the batch's images, or their scaled VAE latents (from the
        cached posterior `moments`, or encoded from the images)."""
        if self.autoencoder is None:
            return batch.image
        if self.latents_cached:
            return self.autoencoder.scaled(batch.moments, sample)
        return self.autoencoder.encode(batch.image, sample)

    def model_for(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """The network the loss calls: with an image-to-video model, conditioned on the first frames
        of `x0` (each given with probability p_first_frame)."""
        if self.p_first_frame is None:
            return self.net
        first = keep_first_frames(x0, self.p_first_frame, generator)
        return FrameConditioned(self.net, frame_condition(first, x0))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x0 = self.diffusion_input(batch)
        loss = self.diffusion.training_losses(self.model_for(x0), x0,
                                              cond=self.condition_of(batch, drop=True)).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x0))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x0 = self.diffusion_input(batch, sample=False)
        # Fixed t and noise per batch, so val/loss is comparable between epochs.
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        t = self.diffusion.sample_timesteps(len(x0), generator=gen).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device, x0.dtype)
        loss = self.diffusion.training_losses(self.model_for(x0, gen), x0, t=t, noise=noise,
                                              cond=self.condition_of(batch, drop=False)).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(x0), sync_dist=True)

    # ----- sampling (its inputs: modules/sampling_inputs.py) ---------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, seed: int = 0, batch_size: int | None = None,
               return_trajectory: bool = False, progress: bool = False, labels=None, prompts=None,
               guidance_scale: float | None = None, guidance_rescale: float | None = None,
               **overrides: Any):
        """Images in [-1, 1] (or points, for vector data) from the configured sampler (overrides:
        steps, sampler, eta, ...); with `return_trajectory`, (images, trajectory).
        See `sample_outputs` for the options."""
        out = self.sample_outputs(num_samples, seed, batch_size, return_trajectory, progress, labels, prompts,
                                  guidance_scale, guidance_rescale, **overrides)
        return (out["images"], out["trajectory"]) if return_trajectory else out["images"]

    @torch.no_grad()
    def sample_outputs(self, num_samples: int, seed: int = 0, batch_size: int | None = None,
                       return_trajectory: bool = False, progress: bool = False, labels=None, prompts=None,
                       guidance_scale: float | None = None, guidance_rescale: float | None = None,
                       first_frames=None, **overrides: Any) -> dict[str, torch.Tensor]:
        """{"images", "latents" (latent models: before decoding), "trajectory" (when asked)}.

        A class-conditional model samples `labels` (default: every class in turn), a text-
        conditioned one `prompts` (or its class prompts for `labels`), with classifier-free
        guidance at `guidance_scale` (default: the trained guidance.scale). An image-to-video
        model starts its clips from `first_frames` (images in [-1, 1]; None: from text alone).
        Seeding: batch b uses generator seed (seed, b), so results do not depend on the device.
        """
        conds = self.sampling_conditions(num_samples, labels, prompts)
        frames = self.first_frame_condition(first_frames, num_samples)
        overrides = {**self.guidance_options(guidance_scale, guidance_rescale), **overrides}
        if self.autoencoder is not None:
            if overrides.get("clip_x0"):
                raise UserError("sampler.clip_x0=true: latents are not bounded like pixels; a latent "
                                "diffusion checkpoint samples without x0 clipping")
            overrides["clip_x0"] = False
        was_training = self.training
        self.eval()
        batch_size = batch_size or num_samples
        outs, latents, trajs = [], [], []
        try:
            for b in range(math.ceil(num_samples / batch_size)):
                rows = slice(b * batch_size, min((b + 1) * batch_size, num_samples))
                n = rows.stop - rows.start
                gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
                cond = None if conds is None else conds[rows].to(self.device)
                model = self.net if frames is None else FrameConditioned(self.net, frames[rows].to(self.device))
                trajectory = Trajectory() if return_trajectory else None
                out = self.sampler(model, (n, *self.sample_shape), self.diffusion, cond=cond,
                                   generator=gen, device=self.device, callback=trajectory,
                                   progress=progress, **overrides)
                if trajectory is not None:
                    traj = trajectory.stack()
                    trajs.append(traj if self.autoencoder is None else torch.stack(
                        [self.autoencoder.decode(z.to(self.device)).to(traj.device) for z in traj]))
                if self.autoencoder is not None:
                    latents.append(out.cpu())
                    out = self.autoencoder.decode(out)
                outs.append((out.clamp(-1, 1) if len(self.image_shape) >= 3 else out).cpu())   # images, clips: [-1, 1]
        finally:
            self.train(was_training)
        result = {"images": torch.cat(outs)}
        if latents:
            result["latents"] = torch.cat(latents)
        if return_trajectory:
            result["trajectory"] = torch.cat(trajs, dim=1)
        return result
