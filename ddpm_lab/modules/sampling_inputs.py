"""What a sample is conditioned on: the labels or prompts of its condition, the guidance scale,
and the first frame of an image-to-video model. A mixin of `DiffusionModule`, which holds the
network, the guidance config and the hyper-parameters these read."""

from __future__ import annotations

import torch

from ddpm_lab.diffusion.first_frame import frame_condition
from ddpm_lab.errors import UserError


def expand_to(values: torch.Tensor, n: int, key: str, plural: str) -> torch.Tensor:
    """One value for every sample, or one per sample."""
    if len(values) not in (1, n):
        raise UserError(f"{key}: {len(values)} {plural} for {n} samples; give one {key} or one per sample")
    return values.expand(n, *values.shape[1:]) if len(values) == 1 else values


class SamplingInputs:
    """Sampling conditions from labels, prompts, guidance options and first frames."""

    def sampling_labels(self, num_samples: int, labels=None) -> torch.Tensor | None:
        """Labels for `num_samples` samples: None (unconditional model), the given label(s), or
        0, 1, ..., K-1 repeated (every class in turn) when none are given."""
        if not self.guidance.conditional:
            if labels is not None:
                raise UserError(f"label={labels}: this checkpoint is unconditional (trained with "
                                f"guidance=none); train with guidance=classifier_free to condition")
            return None
        k = self.num_classes
        if not k:
            raise UserError(f"label={labels}: this text-conditioned checkpoint's data set has no classes; "
                            f"give prompt=... instead")
        if labels is None:
            return torch.arange(num_samples) % k
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise UserError(f"label={bad[0].item()} is outside the {k} classes of "
                            f"{self.hparams['data_info'].get('name')} (0..{k - 1})")
        return expand_to(labels, num_samples, "label", "labels")

    @property
    def num_classes(self) -> int | None:
        if self.guidance.condition == "text":
            return len(self.hparams["data_info"].get("class_prompts") or []) or None
        return self.net.num_classes

    def sampling_conditions(self, num_samples: int, labels=None, prompts=None) -> torch.Tensor | None:
        """The sampler's `cond`: labels for a class-conditional model, token ids for a text one.

        A text model takes `prompts` (one, or one per sample) or, for labels (default: every class
        in turn), the data set's class prompts ("a red circle", ...) saved in the checkpoint.
        """
        if prompts is not None and self.guidance.condition != "text":
            what = "unconditional" if not self.guidance.conditional else "conditioned on class labels (use label=...)"
            raise UserError(f"prompt={prompts!r}: this checkpoint is {what}; prompts need a model trained "
                            f"with guidance=text")
        if self.guidance.condition != "text":
            return self.sampling_labels(num_samples, labels)
        if prompts is None:
            if labels is not None and not self.num_classes:
                self.sampling_labels(num_samples, labels)      # the error
            if not self.num_classes:
                return self.net.null_condition(num_samples, "cpu")
            labels = self.sampling_labels(num_samples, labels)
            prompts = [self.hparams["data_info"]["class_prompts"][k] for k in labels.tolist()]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.net.text_encoder.vocabulary.encode(prompts)
        return expand_to(ids, num_samples, "prompt", "prompts")

    def guidance_options(self, scale: float | None, rescale: float | None) -> dict:
        """guidance_scale / guidance_rescale for the sampler: the trained defaults unless given."""
        if not self.guidance.conditional:
            if (scale is not None and scale != 1.0) or rescale:
                raise UserError(f"guidance.scale={scale}: this checkpoint is unconditional (trained "
                                f"with guidance=none), there is nothing to guide")
            return {}
        return {"guidance_scale": self.guidance.scale if scale is None else float(scale),
                "guidance_rescale": self.guidance.rescale if rescale is None else float(rescale)}

    def require_image_to_video(self) -> None:
        """A first frame needs a video model trained for image-to-video."""
        if not self.is_video or self.p_first_frame is None:
            what = "an image model" if not self.is_video else "a text-to-video model (trained without image_to_video)"
            raise UserError(f"first_frame: this checkpoint is {what}; image-to-video needs a video model "
                            f"trained with image_to_video.p_first_frame > 0")

    def first_frame_condition(self, first_frames, num_samples: int) -> torch.Tensor | None:
        """The sampler's first-frame condition (N, C' + 1, F', h, w) from images (1 or N, C, H, W) in
        [-1, 1] (latent models: encoded as one-frame clips), or the empty one (text-to-video)."""
        if first_frames is None and self.p_first_frame is None:
            return None
        self.require_image_to_video()
        like = torch.zeros(num_samples, *self.sample_shape)
        if first_frames is None:
            return frame_condition(None, like)
        first = expand_to(torch.as_tensor(first_frames, dtype=torch.float32), num_samples, "first_frame", "images")
        c, _, h, w = self.image_shape
        if tuple(first.shape[1:]) != (c, h, w):
            raise UserError(f"first_frame: images of shape {tuple(first.shape[1:])}; this model's frames are {(c, h, w)}")
        if self.autoencoder is not None:
            first = self.autoencoder.encode(first[:, :, None].to(self.device), sample=False)[:, :, 0].cpu()
        return frame_condition(first, like)
