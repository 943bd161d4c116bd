"""ddpm-export: a checkpoint as a diffusers pipeline folder (DDPMPipeline / DDIMPipeline), and
ddpm-import: a diffusers pipeline or UNet2DModel folder as a ddpm_lab checkpoint. Hydra apps with
a testable `run(cfg)` / `run_import(cfg)`; the work is in diffusers_export.py and pretrained.py.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.checkpoints import checkpoint_of
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.config_check import check_config
from ddpm_lab.diffusers_export import check_out, export_pipeline, save_pipeline, usage_note
from ddpm_lab.pretrained import import_checkpoint, load_model


def run(cfg: DictConfig) -> Path:
    """Write the checkpoint `ckpt_path` (EMA weights) as a diffusers pipeline folder `out`."""
    check_config(cfg, "export")
    out = Path(str(cfg.out)).expanduser()
    check_out(out, cfg.overwrite)                    # before the checkpoint is read
    ckpt_path = checkpoint_of(cfg)
    module = load_model(ckpt_path, "cpu")
    pipeline = export_pipeline(module, source=f"ckpt_path={str(ckpt_path)!r}")
    save_pipeline(pipeline, out, cfg.overwrite)
    print(f"ddpm-export: wrote {out} ({type(pipeline).__name__}); sample it with "
          f"{usage_note(module, pipeline)}")
    return out


def run_import(cfg: DictConfig) -> Path:
    """Write the diffusers folder `folder` as the ddpm_lab checkpoint `out`."""
    check_config(cfg, "import")
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    out = import_checkpoint(cfg.folder, cfg.out, data=data, dropout=cfg.get("dropout"), overwrite=cfg.overwrite)
    print(f"ddpm-import: wrote {out}; sample it with ddpm-sample ckpt_path={out}, fine-tune it with "
          f"ddpm-train init_from={out}")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@user_errors("ddpm-export")
def main(cfg: DictConfig) -> None:
    run(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="import")
@user_errors("ddpm-import")
def import_main(cfg: DictConfig) -> None:
    run_import(cfg)


if __name__ == "__main__":
    main()
