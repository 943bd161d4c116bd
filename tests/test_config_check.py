"""Every config value is checked before anything runs (ddpm_lab/config_check): a wrong type or
range anywhere is one UserError naming the key and what is allowed; through the console scripts,
one `<prog>: error: ...` line, exit status 2, and no run folder."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from ddpm_lab.cli import CONF_DIR
from ddpm_lab.config_check import check_config, groups
from ddpm_lab.config_check.hydra_callback import ConfigCheck
from ddpm_lab.config_check.rules import Group, Named, signature_keys
from ddpm_lab.config_check.tasks import TASK
from ddpm_lab.errors import UserError
from tests.helpers import last_error_line, run_cli

CONF = Path(CONF_DIR)
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
NEEDS = {"data=image_folder": ["data.path=/some/folder"], "vae=pretrained": ["vae.path=/some/vae"]}
CKPT = ["ckpt_path=some.ckpt"]


GROUPS = {"data", "net", "schedule", "diffusion", "sampler", "guidance", "vae", "trainer", "callbacks",
          "logger", "experiment", "hparams_search", "debug", "paths", "task"}


@functools.cache
def composed(app: str, overrides: tuple, hydra: bool):
    extra = ["paths.output_dir=/tmp/unused"] if app == "train" and not hydra else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(app, overrides=[*overrides, *extra], return_hydra_config=hydra)


def compose_app(app: str, overrides: list[str], hydra: bool = False):
    """`app`'s config with `overrides`: the group choices composed by Hydra (once per set), the
    values parsed and applied as Hydra applies them (Override.value(), OmegaConf.update): fast."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    picked = tuple(o.input_line for o in parsed if o.key_or_group in GROUPS)
    cfg = copy.deepcopy(composed(app, picked, hydra))
    with open_dict(cfg):
        for o in parsed:
            if o.key_or_group not in GROUPS:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
    return cfg


def group_options() -> list[list[str]]:
    """Every option of every group train.yaml composes (data=digits, net=mlp, ...), one option of
    each group per config (round robin: a handful of compositions cover them all); the diffusion
    is the one the sampler runs on (flow_* samplers: diffusion=flow)."""
    options = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
               for g in ("data", "net", "schedule", "diffusion", "sampler", "guidance", "vae", "trainer",
                         "callbacks", "logger")}
    rounds = []
    for i in range(max(len(o) for o in options.values())):
        picked = {g: o[i % len(o)] for g, o in options.items()}
        picked["diffusion"] = "flow" if picked["sampler"].startswith("flow_") else "default"  # sampler fits process
        picked = [f"{g}={o}" for g, o in picked.items()]
        rounds.append(picked + [x for p in picked for x in NEEDS.get(p, [])])
    return rounds


# ----- no false positives ----------------------------------------------------------------------
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_experiment_config_passes(experiment):
    check_config(compose_app("train", [f"experiment={experiment}"] if experiment else []), "train")


@pytest.mark.parametrize("options", group_options())
def test_every_group_option_passes(options):
    check_config(compose_app("train", options), "train")


@pytest.mark.parametrize("app, overrides", [
    ("sample", CKPT), ("eval", CKPT), ("forward", []), ("train_reference", []),
    ("export", ["ckpt_path=a.ckpt", "out=p"]), ("import", ["folder=f", "out=a.ckpt", "data=digits"]),
    *[("sample", [*CKPT, f"sampler={p.stem}"]) for p in sorted((CONF / "sampler").glob("*.yaml"))],
    ("eval", [*CKPT, "sampler=ddim"]),
    *[("edit", [*CKPT, f"task={p.stem}"]) for p in sorted((CONF / "task").glob("*.yaml"))],
    ("edit", [*CKPT, "task=sdedit", "task.label=[1,2]", "task.guidance_scale=3", "task.sampler=ddim", "input=imgs"]),
    ("sample", [*CKPT, "label=[1,2]", "prompt=a red circle", "guidance.scale=4", "device=cuda:1", "trajectory=true"]),
    ("eval", [*CKPT, "logger=csv", "metrics=[fd,kid,accuracy]", "guidance.scales=[0,1,3]", "feature=inception"]),
])
def test_default_app_configs_pass(app, overrides):
    check_config(compose_app(app, overrides), app)


@pytest.mark.parametrize("overrides", [
    ["optim.lr=1"], ["trainer.precision=16"], ["trainer.precision=bf16"], ["trainer.devices=[0,1]"],
    ["trainer.limit_train_batches=0.5"], ["trainer.max_time={hours:1}"], ["++trainer.fast_dev_run=3"],
    ["sampler=ddim", "sampler.eta=1"], ["+callbacks.ema.use_buffers=false"], ["trainer=fsdp", "~callbacks.ema"],
    ["diffusion=flow", "sampler=flow_heun", "sampler.steps=5000", "sampler.shift=3"],
    ["diffusion=flow", "sampler=flow_unipc", "diffusion.time_sampling=logit_normal", "diffusion.loss_weighting=cosmap"],
    ["diffusion=flow", "sampler=flow_euler", "schedule.zero_terminal_snr=true"],
    ["+callbacks.signal._target_=tests.helpers.SignalAtStep", "+callbacks.signal.step=3"],
])
def test_valid_values_pass(overrides):
    check_config(compose_app("train", overrides), "train")


# ----- wrong values ----------------------------------------------------------------------------
BAD_TRAIN = [
    # top level and optim
    (["optim.lr=abc"], "optim.lr='abc' must be a positive number"),
    (["optim.lr=-0.1"], "optim.lr"), (["optim.lr=0"], "optim.lr"), (["optim.weight_decay=-1"], "optim.weight_decay"),
    (["optim.betas=[0.9]"], "optim.betas"), (["optim.betas=[0.9,1.5]"], r"optim.betas\[1\]"),
    (["optim.warmup_steps=1.5"], "optim.warmup_steps"), (["optim.decay=linear"], "optim.decay='linear' is not allowed"),
    (["optim.final_lr_ratio=2"], "optim.final_lr_ratio"), (["seed=-1"], "seed"), (["seed=abc"], "seed"),
    (["stage=vae"], "stage='vae' is not allowed; choose one of: diffusion, autoencoder"),
    (["compile=maybe"], "compile"), (["channels_last=yes"], "channels_last"), (["tags=[a,1]"], r"tags\[1\]"), (["autoencoder.kl_weight=-1"], "autoencoder.kl_weight"),
    (["autoencoder.reconstruction=l3"], "autoencoder.reconstruction"), (["latents.cache=2"], "latents.cache"),
    (["+optim.momentum=0.9"], "optim.momentum is unknown"),
    # data
    (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"), (["data.batch_size=3.0"], "data.batch_size"),
    (["data.batch_size=true"], "data.batch_size"), (["data.val_fraction=1"], "data.val_fraction"),
    (["data.num_workers=-1"], "data.num_workers"), (["data.channels=3"], "data.channels=3 is not allowed"),
    (["data.image_size=abc"], "data.image_size"), (["+data.foo=1"], "data.foo is unknown"),
    (["data=gmm", "data.separation=0"], "data.separation"), (["data=shapes", "data.partial_captions=2"], "data.partial_captions"),
    (["data=moving_shapes", "data.frames=abc"], "data.frames='abc' must be an integer >= 2"),
    (["data=image_folder"], "Missing mandatory value: data.path"),
    # net
    (["net.base_channels=0"], "net.base_channels"), (["net.channel_mult=[1,a]"], r"net.channel_mult\[1\]"),
    (["net.channel_mult=[]"], "net.channel_mult"), (["net.dropout=1.5"], "net.dropout"), (["net.num_heads=0"], "net.num_heads"),
    (["net.num_classes=0"], "net.num_classes"), (["+net.foo=1"], "net.foo is unknown"),
    (["net=mlp", "net.hidden=64.5"], "net.hidden"), (["net=diffusers_unet2d", "net.attention_levels=[1,0,0]"], r"net.attention_levels\[0\]"),
    (["guidance=text", "net.text={dim:10,heads:3}"], "net.text.dim=10 must be a multiple of net.text.heads=3"),
    (["net=dit_small", "net.patch_size=0"], "net.patch_size=0 must be an integer >= 1"),
    (["net=dit_small", "net.mlp_ratio=0"], "net.mlp_ratio"), (["net=dit_small", "net.qk_norm=1"], "net.qk_norm"),
    (["net=dit_small", "net.rope_theta=-1"], "net.rope_theta"), (["net=dit_small", "+net.dropout=0.1"], "net.dropout is unknown"),
    (["net=wan_tiny", "net.qk_norm=layer_norm"], "net.qk_norm='layer_norm' is not allowed; choose one of: rms_norm_across_heads"),
    (["net=wan_tiny", "net.ffn_dim=1.5"], "net.ffn_dim"), (["net=wan_tiny", "net.cross_attn_norm=2"], "net.cross_attn_norm"),
    # schedule, diffusion, sampler, guidance
    (["schedule.name=quadratic"], "schedule.name='quadratic' is not allowed; choose one of: linear, cosine, sigmoid"),
    (["schedule.num_steps=0"], "schedule.num_steps must be an integer >= 1, got 0"), (["schedule.beta_end=1.5"], "schedule.beta_end"),
    (["schedule=cosine", "schedule.s=-1"], "schedule.s"), (["schedule.name=cosine"], "schedule.beta_start is unknown"),
    (["schedule.zero_terminal_snr=yes"], "schedule.zero_terminal_snr"),
    (["schedule.zero_terminal_snr=true"], "needs diffusion.prediction=v"),
    (["diffusion.prediction=score"], "diffusion.prediction='score' is not allowed; choose one of: eps, x0, v"),
    (["diffusion.loss_weighting=snr"], "diffusion.loss_weighting"), (["diffusion.min_snr_gamma=0"], "diffusion.min_snr_gamma"),
    (["sampler.name=euler"], "sampler.name='euler' is not allowed; choose one of: ddpm, ddim"),
    (["sampler.steps=0"], "sampler.steps"), (["sampler.steps=2000"], r"sampler.steps=2000 must be an integer in \[1, 1000\]"),
    (["sampler.eta=-1"], "sampler.eta"), (["sampler.spacing=middle"], "sampler.spacing='middle'"),
    (["sampler.variance=learned"], "sampler.variance"), (["sampler.clip_x0=1"], "sampler.clip_x0"),
    (["sampler=diffusers", "sampler.scheduler=Nope"], "sampler.scheduler='Nope' is not allowed"),
    (["+sampler.foo=1"], "sampler.foo is unknown"),
    # flow matching (diffusion=flow) and the sampler that fits the process
    (["diffusion=flow", "diffusion.shift=0"], "diffusion.shift=0 must be a positive number"),
    (["diffusion=flow", "diffusion.logit_std=0"], "diffusion.logit_std=0 must be a positive number"),
    (["diffusion=flow", "diffusion.prediction=score"], "diffusion.prediction='score' is not allowed; choose one of: v, x0, eps, edm"),
    (["diffusion=flow", "diffusion.time_sampling=mode"], "diffusion.time_sampling='mode' is not allowed"),
    (["diffusion=flow", "diffusion.loss_weighting=min_snr"], "diffusion.loss_weighting='min_snr' is not allowed"),
    (["diffusion=flow", "+diffusion.min_snr_gamma=5"], "diffusion.min_snr_gamma is unknown"),
    (["diffusion=flow", "sampler=flow_euler", "diffusion.prediction=eps"], "diffusion.prediction=eps cannot be sampled"),
    (["diffusion=flow", "sampler=ddim"], r"sampler.name=ddim is a DDPM sampler; this model is flow matching \(diffusion=flow\)"),
    (["sampler=flow_euler"], r"sampler.name=flow_euler is a flow-matching sampler; this model is DDPM \(diffusion=default\)"),
    (["sampler=ddim", "+sampler.shift=3"], "sampler.shift=3 is a flow-matching option"),
    (["diffusion=flow", "sampler=flow_heun", "sampler.shift=0"], "sampler.shift=0 must be a positive number"),
    (["diffusion=flow", "sampler=flow_euler", "+sampler.eta=0.5"], "sampler.eta=0.5 is a DDPM option"),
    (["diffusion=flow", "sampler=flow_euler", "+sampler.spacing=trailing"], "sampler.spacing='trailing' is a DDPM option"),
    (["diffusion=flow", "sampler=flow_dpmpp", "sampler.scheduler=EulerDiscreteScheduler"],
     r"sampler.scheduler='EulerDiscreteScheduler' is not allowed \(this model is flow matching\)"),
    (["guidance.condition=caption"], "guidance.condition='caption' is not allowed"),
    (["guidance.p_uncond=1.5"], "guidance.p_uncond"), (["guidance.scale=-1"], "guidance.scale"), (["guidance.rescale=2"], "guidance.rescale"),
    # vae
    (["vae=f4", "vae.downsample=3"], r"vae.downsample=3 must be a power of two"), (["vae=f4", "vae.latent_channels=0"], "vae.latent_channels"),
    (["vae=f4", "vae.mid_attention=2"], "vae.mid_attention"), (["vae=pretrained"], "Missing mandatory value: vae.path"),
    # trainer
    (["trainer.precision=17"], "trainer.precision=17 is not allowed"), (["trainer.precision=fp8"], "trainer.precision"),
    (["trainer.accelerator=quantum"], "trainer.accelerator"), (["trainer.strategy=ddpp"], "trainer.strategy"),
    (["trainer.devices=0"], "trainer.devices"), (["trainer.max_epochs=-2"], "trainer.max_epochs"), (["trainer.max_steps=1.5"], "trainer.max_steps"),
    (["trainer.max_time=5"], "trainer.max_time"), (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"), (["trainer.log_every_n_steps=-1"], "trainer.log_every_n_steps"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"), (["trainer.deterministic=sometimes"], "trainer.deterministic"),
    (["++trainer.fast_dev_run=-1"], "trainer.fast_dev_run"), (["+trainer.max_epoch=3"], "trainer.max_epoch is unknown"),
    # callbacks and loggers
    (["callbacks.ema.decay=1"], "callbacks.ema.decay"), (["callbacks.sample_grid.num_samples=0"], "callbacks.sample_grid.num_samples"),
    (["callbacks.sample_grid.every_n_epochs=x"], "callbacks.sample_grid.every_n_epochs"),
    (["callbacks.model_checkpoint.mode=avg"], "callbacks.model_checkpoint.mode"),
    (["callbacks.progress_bar.refresh_rate=-1"], "callbacks.progress_bar.refresh_rate"),
    (["callbacks.lr_monitor.logging_interval=batch"], "callbacks.lr_monitor.logging_interval"),
    (["+callbacks.ema.foo=1"], "callbacks.ema.foo is unknown"), (["callbacks=fd", "callbacks.fd_evaluation.num_samples=1"], "callbacks.fd_evaluation.num_samples"),
    (["+callbacks.x._target_=nope.Nope"], "callbacks.x._target_='nope.Nope' cannot be imported"),
    (["+callbacks.signal._target_=tests.helpers.SignalAtStep", "+callbacks.signal.bogus=1"], "callbacks.signal.bogus is unknown"),
    (["experiment=gmm_guidance", "callbacks.guidance_figure.scales=[1,-2]"], r"callbacks.guidance_figure.scales\[1\]"),
    (["logger.wandb.mode=online-ish"], "logger.wandb.mode"), (["+logger.wandb.foo=1"], "logger.wandb.foo is unknown"),
    (["logger=csv", "+logger.csv.name=''"], "logger.csv.name"),
    (["+image_to_video.p_first_frame=0"], r"image_to_video.p_first_frame=0 must lie in \(0, 1\]"),
    (["+image_to_video.p=0.5"], "image_to_video.p is unknown"),
    (["experiment=moving_shapes_flow", "net.attention=sparse"], "net.attention='sparse' is not allowed"),
]


@pytest.mark.parametrize("overrides, message", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_train_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        check_config(compose_app("train", overrides), "train")


BAD_APPS = [
    ("sample", ["sampler.eta=-1"], r"sampler.eta=-1 must be a number in \[0, 1\] or null"),
    ("sample", ["guidance.scale=-1"], "guidance.scale=-1.0 must be >= 0"), ("sample", ["guidance.rescale=2"], "guidance.rescale"),
    ("sample", ["num_samples=0"], "num_samples"), ("sample", ["batch_size=abc"], "batch_size"),
    ("sample", ["device=tpu"], "device='tpu' is not allowed"), ("sample", ["label=-1"], "label"),
    ("sample", ["prediction=score"], "prediction"), ("sample", ["sampler.steps=2.5"], "sampler.steps"),
    ("sample", ["sampler.name=diffusers", "sampler.scheduler=Nope"], "sampler.scheduler='Nope' is not allowed"),
    ("sample", ["+sampler.foo=1"], "sampler.foo is unknown"), ("sample", ["trajectory_frames=1"], "trajectory_frames"),
    ("sample", ["sampler=flow_euler", "sampler.shift=-1"], "sampler.shift=-1 must be a positive number"),
    ("sample", ["sampler.name=diffusers", "sampler.scheduler=Nope"], "FlowMatchEulerDiscreteScheduler"),
    ("sample", ["format=webm"], "format='webm' is not allowed; choose one of: gif, mp4"),
    ("sample", ["fps=0"], "fps=0 must be a positive number"), ("sample", ["fps=abc"], "fps='abc'"),
    ("eval", ["metrics=[fd,inception_score]"], "metrics='inception_score' is not allowed; choose one of: fd, kid, accuracy"),
    ("eval", ["metrics=fd"], "metrics"), ("eval", ["num_samples=1"], "num_samples"), ("eval", ["feature=clip"], "feature"),
    ("eval", ["kid_subset_size=0"], "kid_subset_size"), ("eval", ["guidance.scales=[1,-1]"], r"guidance.scales\[1\]"),
    ("eval", ["logger=csv", "+logger.csv.foo=1"], "logger.csv.foo is unknown"),
    ("forward", ["num_images=0"], "num_images"), ("forward", ["schedule.num_steps=abc"], "schedule.num_steps"),
    ("forward", ["data.batch_size=0"], "data.batch_size"), ("train_reference", ["lr=abc"], "lr"),
    ("export", ["ckpt_path=a.ckpt", "out=p", "overwrite=maybe"], "overwrite='maybe'"),
    ("import", ["folder=f", "out=a.ckpt", "dropout=2"], r"dropout=2 must be a number in \[0, 1\)"),
    ("import", ["folder=f", "out=a.ckpt", "data=digits", "data.batch_size=0"], "data.batch_size"),
    ("train", ["net=unet_ddpm_cifar10", "net.downsample_padding=tf"],
     "net.downsample_padding='tf' is not allowed; choose one of: same, symmetric"),
]


@pytest.mark.parametrize("app, overrides, message", BAD_APPS, ids=[f"{a}:{' '.join(o)}" for a, o, _ in BAD_APPS])
def test_bad_app_values_name_the_key(app, overrides, message):
    with pytest.raises(UserError, match=message):
        check_config(compose_app(app, [*(CKPT if app in ("sample", "eval") else []), *overrides]), app)


def test_missing_checkpoint_is_named():
    with pytest.raises(UserError, match="Missing mandatory value: ckpt_path"):
        check_config(compose_app("sample", []), "sample")


def test_table_keys_are_parameters_of_their_targets():
    """Every key of a target's table is a named parameter of that target (no typo in the tables)."""
    specs = [groups.DATA, groups.NET, groups.SCHEDULE, groups.DIFFUSION, groups.SAMPLER, groups.GUIDANCE,
             groups.VAE, groups.TRAINER, groups.CALLBACKS.entry, groups.LOGGERS.entry, TASK]
    for spec in specs:
        assert isinstance(spec, Group) and not isinstance(spec, Named)
        for target, section in spec.targets.items():
            try:
                named, var_kw = signature_keys(target, "x")
            except UserError:
                continue                    # a target renamed in the code (kept for old configs)
            if not var_kw:
                assert set(section.rules) <= named, (target, set(section.rules) - named)


# ----- the Hydra callback ----------------------------------------------------------------------
def test_callback_exits_2_with_one_line(capsys):
    cfg = compose_app("train", ["data.batch_size=0"], hydra=True)
    with pytest.raises(SystemExit) as stop:
        ConfigCheck().on_run_start(cfg, config_name="train")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "ddpm-train: error: data.batch_size=0 must be an integer >= 1\n"
    ConfigCheck().on_run_start(compose_app("train", [], hydra=True))       # a good config passes


def test_callback_checks_each_job_of_a_sweep(capsys):
    from hydra.types import RunMode
    cfg = compose_app("train", ["data.batch_size=0"], hydra=True)
    ConfigCheck().on_job_start(cfg, task_function=None)         # a single run: on_run_start checked it
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    with pytest.raises(SystemExit):
        ConfigCheck().on_job_start(cfg, task_function=None)
    assert "data.batch_size=0 must be" in capsys.readouterr().err


@pytest.mark.parametrize("sweep, message", [
    ("seed=0,-1", "seed=-1 must be"), ("optim.lr=range(0,3)", "optim.lr=0 must be a positive number"),
])
def test_callback_checks_swept_values_before_the_sweep(capsys, sweep, message):
    cfg = compose_app("train", [], hydra=True)
    with open_dict(cfg):
        OmegaConf.update(cfg, "hydra.overrides.task", [sweep])
    with pytest.raises(SystemExit):
        ConfigCheck().on_multirun_start(cfg)
    assert message in capsys.readouterr().err


def test_callback_checks_the_optuna_search_space(capsys):
    cfg = compose_app("train", ["hparams_search=optuna"], hydra=True)
    ConfigCheck().on_multirun_start(cfg)                                  # the shipped space passes
    with open_dict(cfg):
        cfg.hydra.sweeper.params["optim.lr"] = "tag(log, interval(-1, 1))"
    with pytest.raises(SystemExit):
        ConfigCheck().on_multirun_start(cfg)
    assert "optim.lr=-1.0 must be a positive number" in capsys.readouterr().err


CLI_CASES = [
    ("ddpm-train", ["optim.lr=abc"], "ddpm-train: error: optim.lr='abc' must be a positive number"),
    ("ddpm-train", ["-m", "seed=0,-1"], "ddpm-train: error: seed=-1 must be an integer in [0, 4294967295]"),
    ("ddpm-sample", ["ckpt_path=x.ckpt", "sampler.eta=-1"], "ddpm-sample: error: sampler.eta=-1 must be"),
]


def test_console_scripts_stop_before_any_folder(tmp_path):
    """A run, a sweep (-m) and ddpm-sample: exit 2, one line naming the key, no folder made
    (the three run side by side: each spends its time importing)."""
    from concurrent.futures import ThreadPoolExecutor

    def launch(i: int):
        script, args, _ = CLI_CASES[i]
        (tmp_path / str(i)).mkdir()
        return run_cli(script, *args, f"paths.log_dir={tmp_path / str(i) / 'logs'}", cwd=tmp_path / str(i),
                       timeout=180)

    with ThreadPoolExecutor(len(CLI_CASES)) as pool:
        procs = list(pool.map(launch, range(len(CLI_CASES))))
    for i, ((_, _, message), proc) in enumerate(zip(CLI_CASES, procs)):
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert last_error_line(proc).startswith(message), proc.stderr[-2000:]
        assert not re.search(r"\n\s*\S", proc.stderr.strip()), proc.stderr       # the message is one line
        assert [p.name for p in (tmp_path / str(i)).iterdir()] == []            # no logs/, no outputs/


@pytest.mark.parametrize("overrides, message", [
    (["optim.optimizer._partial_=false"], "optim.optimizer._partial_=False must be true"),
    (["+optim.optimizer.foo=1"], r"optim.optimizer.foo is unknown; optim.optimizer \(torch.optim.AdamW\) takes"),
    (["optim.optimizer.lr=0"], "optim.optimizer.lr=0 must be a positive number"),
    (["optim.optimizer._target_=torch.optim.Nope"], "optim.optimizer._target_='torch.optim.Nope' cannot be imported"),
    (["optim.optimizer._target_=torch.optim.SGD"], r"optim.optimizer.betas is unknown; optim.optimizer \(torch.optim.SGD\)"),
])
def test_optimizer_keys_are_checked(overrides, message):
    with pytest.raises(UserError, match=message):
        check_config(composed("train", tuple(overrides), False), "train")
    check_config(composed("train", ("optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas",
                                    "+optim.optimizer.momentum=0.9"), False), "train")
