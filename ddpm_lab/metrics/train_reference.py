"""Train a reference classifier for FD / KID / class accuracy and ship it in the package.

    python -m ddpm_lab.metrics.train_reference data=digits [epochs=40]
    python -m ddpm_lab.metrics.train_reference data=shapes data.image_size=16 epochs=8 blur=true

Trains on the data module's training split, reports accuracy on its held-out split (the same split
the diffusion models hold out), and writes `ddpm_lab/metrics/weights/<data><size>.pt` with a JSON
record of its config and accuracy beside it.
"""

from __future__ import annotations

import json

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.transforms.v2.functional import gaussian_blur

from ddpm_lab.checkpoint_io import atomic_save, atomic_write_bytes
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.metrics.reference import WEIGHTS_DIR, ReferenceClassifier, reference_name


def augment(x: torch.Tensor, generator: torch.Generator, blur: bool = False) -> torch.Tensor:
    """Random shifts of up to 1/8 of the image (pad with background -1 and crop); with `blur`, half
    the batches are also Gaussian-blurred (sigma 0.3-1.2 px), so that soft edges (a VAE's decoder,
    an undertrained model) do not change what the classifier reads."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    if blur and torch.rand((), generator=generator) < 0.5:
        sigma = 0.3 + 0.9 * torch.rand((), generator=generator).item()
        x = gaussian_blur(F.pad(x, (2, 2, 2, 2), value=-1.0), [5, 5], [sigma, sigma])[:, :, 2:-2, 2:-2]
    return x


@torch.no_grad()
def accuracy(model: ReferenceClassifier, loader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        correct += (model(batch.image).argmax(1) == batch.label).sum().item()
        total += len(batch.label)
    return correct / total


def train_reference(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    c, size = dm.image_shape[0], dm.image_shape[1]
    config = {"in_channels": c, "num_classes": dm.num_classes, "image_size": size,
              "feature_dim": cfg.feature_dim, "width": cfg.width}
    model = ReferenceClassifier(**config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * len(dm.train_dataloader()))
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        model.train()
        for batch in dm.train_dataloader():
            loss = F.cross_entropy(model(augment(batch.image, gen, cfg.blur)), batch.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, held-out accuracy {accuracy(model, dm.val_dataloader()):.4f}")
    name = reference_name(cfg.data_name, size)
    model.eval()
    with torch.no_grad():
        feats = model.features(stack_dataset(dm.train_set).image)
    record = {"name": name, "config": config, "data": cfg.data_name,
              "feature_scale": feats.pow(2).mean().sqrt().item(),
              "held_out_accuracy": accuracy(model, dm.val_dataloader()),
              "held_out_count": len(dm.val_set), "train_count": len(dm.train_set),
              "epochs": cfg.epochs, "seed": cfg.seed, "blur_augment": bool(cfg.blur)}
    out_dir = WEIGHTS_DIR if cfg.out_dir is None else cfg.out_dir
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(model.state_dict(), out_dir / f"{name}.pt")
    atomic_write_bytes(out_dir / f"{name}.json", (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {out_dir / name}.pt: held-out accuracy {record['held_out_accuracy']:.4f} "
          f"on {record['held_out_count']} images")
    return record


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train_reference")
@user_errors("train_reference")
def main(cfg: DictConfig) -> None:
    train_reference(cfg)


if __name__ == "__main__":
    main()
