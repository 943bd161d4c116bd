"""stage=distill end to end on the suite's tiny checkpoint: progressive rounds, resume in the same
round, the student sampled with nothing named, consistency and reflow runs, and the bad inputs."""

from __future__ import annotations

import torch

from ddpm_lab.checkpoint_io import CHECKPOINT_KEY
from ddpm_lab.modules.distillation import STATE_KEY
from ddpm_lab.train import run
from tests.helpers import compose_app, compose_train, user_error

QUICK = ["logger=csv", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
         "callbacks.sample_grid.num_samples=2", "callbacks.sample_grid.every_n_epochs=0"]


def distill(method: str, teacher, out, *extra: str) -> dict:
    return run(compose_train(["stage=distill", f"distill={method}", f"teacher={teacher}", *QUICK,
                              f"paths.log_dir={out.parent}", *extra], out))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_progressive_rounds_resume_in_the_same_round_and_the_student_samples(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    rounds = ["distill.start_steps=4", "distill.final_steps=1", "distill.steps_per_round=2"]
    distill("progressive", tiny_checkpoint, out, *rounds, "trainer.max_steps=3", "trainer.log_every_n_steps=1")
    first = load(out / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 3 and first[STATE_KEY]["round"] == 1
    assert first["hyper_parameters"]["sampler"]["steps"] == 1
    assert first[CHECKPOINT_KEY]["kind"] == "distillation"
    round0 = load(out / "checkpoints" / "round0-2steps.ckpt")          # the first round's 2-step student
    assert round0["hyper_parameters"]["sampler"]["steps"] == 2 and round0[STATE_KEY]["round"] == 0
    assert (out / "samples" / "round0-2steps.png").is_file()
    # round 1's teacher is round 0's student
    for k, v in round0["state_dict"].items():
        assert torch.equal(first[STATE_KEY]["teacher_state"][k.removeprefix("net.")], v), k
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "distill/round" in metrics and "distill/student_steps" in metrics

    distill("progressive", tiny_checkpoint, out, *rounds, f"ckpt_path={out}")      # continues round 1
    resumed = load(out / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4 and resumed[STATE_KEY]["round"] == 1
    for k, v in first[STATE_KEY]["teacher_state"].items():
        assert torch.equal(resumed[STATE_KEY]["teacher_state"][k], v), k    # the same round's teacher

    from ddpm_lab.sample import run as sample_run
    paths = sample_run(compose_app("sample", [f"ckpt_path={out}", "num_samples=2"], tmp_path / "sample"))
    saved = load(paths["tensors"])
    assert saved["sampler"]["name"] == "ddim" and saved["sampler"]["steps"] == 1
    assert saved["sampler"]["spacing"] == "trailing" and saved["images"].shape == (2, 1, 16, 16)

    with user_error("is another model. Resume with teacher="):
        distill("progressive", out / "checkpoints" / "round0-2steps.ckpt", out, *rounds, f"ckpt_path={out}")


def flow_teacher(tiny_checkpoint, tmp_path):
    """The tiny checkpoint relabelled as a flow-matching model (its weights are only a starting point)."""
    ckpt = load(tiny_checkpoint)
    ckpt["hyper_parameters"]["diffusion"] = {"_target_": "ddpm_lab.diffusion.FlowMatching", "prediction": "v"}
    ckpt["hyper_parameters"]["sampler"] = {"_target_": "ddpm_lab.diffusion.samplers.Sampler",
                                           "name": "flow_euler", "steps": 2}
    path = tmp_path / "flow.ckpt"
    torch.save(ckpt, path)
    return path


def test_consistency_and_reflow_students(tiny_checkpoint, tmp_path):
    out = tmp_path / "cd"
    distill("consistency", tiny_checkpoint, out, "distill.steps=2")
    ckpt = load(out / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["sampler"]["name"] == "consistency"
    assert set(ckpt[STATE_KEY]["target_state"]) == {k.removeprefix("net.") for k in ckpt["state_dict"]}

    from ddpm_lab.modules import DiffusionModule
    student = DiffusionModule.load(out)
    one, two = student.sample(3, seed=0), student.sample(3, seed=0, steps=2)
    assert one.shape == two.shape == (3, 1, 16, 16) and not torch.equal(one, two)
    last = student.diffusion.num_steps - 1          # sampler.times: the trailing 2-step grid given by hand
    assert torch.equal(student.sample(3, seed=0, times=[last, (last + 1) // 2 - 1]), two)
    assert not torch.equal(student.sample(3, seed=0, times=[last, last // 4]), two)
    with user_error("must be a non-empty list of strictly decreasing integer timesteps"):
        student.sample(3, seed=0, times=[10, 20])
    with user_error("sampler.times=[10] is for the consistency sampler"):
        student.sample(3, seed=0, sampler="ddim", steps=2, eta=0.0, times=[10])
    timed = tmp_path / "cd_times"                   # times saved in the student, its steps their number
    distill("consistency", tiny_checkpoint, timed, "distill.steps=2", f"distill.sampling_times=[{last},{last // 4}]")
    student = DiffusionModule.load(timed)
    assert student.sampler.times == [last, last // 4] and student.sampler.steps == 2
    assert student.sampler.replace(steps=4).times is None

    teacher = flow_teacher(tiny_checkpoint, tmp_path)
    reflow = ["distill.num_pairs=6", "distill.pair_steps=2", "distill.steps=2"]
    distill("reflow", teacher, tmp_path / "reflow", *reflow)
    cached = list((tmp_path / "cache" / "reflow").glob("*.pt"))
    assert len(cached) == 1
    pairs = load(cached[0])
    assert pairs["noise"].shape == pairs["x1"].shape == (6, 1, 16, 16)
    student = DiffusionModule.load(tmp_path / "reflow")
    assert student.sampler.name == "flow_euler" and student.sampler.steps == 1
    with user_error("needs a flow-matching teacher"):
        distill("reflow", tiny_checkpoint, tmp_path / "reflow_ddpm", *reflow)


def test_bad_distillation_inputs_are_one_line(tiny_checkpoint, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with user_error(f"teacher={str(junk)!r} is not a readable PyTorch checkpoint"):
        distill("progressive", junk, tmp_path / "a")
    ckpt = load(tiny_checkpoint)
    ckpt[CHECKPOINT_KEY]["kind"] = "autoencoder"
    stage1 = tmp_path / "stage1.ckpt"
    torch.save(ckpt, stage1)
    with user_error("is a autoencoder checkpoint (stage=autoencoder), not a diffusion model"):
        distill("progressive", stage1, tmp_path / "b")
    with user_error("distill.start_steps=12 must be a power of two"):
        distill("progressive", tiny_checkpoint, tmp_path / "c", "distill.start_steps=12")
    with user_error("stage=distill needs teacher="):
        run(compose_train(["stage=distill", "distill=progressive", *QUICK], tmp_path / "d"))
    with user_error("distill and teacher are the options of stage=distill"):
        run(compose_train(["distill=progressive", *QUICK], tmp_path / "e"))


def test_every_distill_option_passes_the_config_check():
    from pathlib import Path

    from ddpm_lab.cli import CONF_DIR
    from ddpm_lab.config_check import check_config

    for option in sorted(p.stem for p in (Path(CONF_DIR) / "distill").glob("*.yaml")):
        check_config(compose_app("train", ["stage=distill", f"distill={option}", "teacher=t.ckpt"], Path("x")), "train")


def test_a_conditional_teacher_is_distilled_with_its_guidance(tiny_checkpoint):
    from ddpm_lab.teachers import student_hparams

    hp = load(tiny_checkpoint)["hyper_parameters"]
    hp["guidance"] = {"_target_": "ddpm_lab.diffusion.guidance.Guidance", "condition": "label", "p_uncond": 0.1,
                      "scale": 3.0, "rescale": 0.0}
    method = {"guidance_scale": None}
    student = student_hparams(hp, method, 4)
    assert method["guidance_scale"] == 3.0                           # the teacher's scale, saved in `distill`
    assert student["guidance"]["scale"] == 1.0 and student["guidance"]["condition"] == "label"
    assert student["sampler"]["name"] == "ddim" and student["sampler"]["spacing"] == "trailing"
    assert student_hparams(hp, {"guidance_scale": 5.0}, 4)["guidance"]["scale"] == 1.0
    hp["guidance"] = None
    with user_error("the teacher is unconditional"):
        student_hparams(hp, {"guidance_scale": 2.0}, 4)
