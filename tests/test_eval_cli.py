"""ddpm-eval end to end on a checkpoint trained by the test."""

import json
import re

import pytest

from ddpm_lab import train
from ddpm_lab.errors import UserError
from ddpm_lab.evaluate import evaluate
from tests.helpers import compose_app, compose_train, last_error_line, run_cli


@pytest.fixture
def tiny_ckpt(tiny_checkpoint):
    return tiny_checkpoint


def test_eval_writes_metrics_json_with_floor_and_counts(tiny_ckpt, tmp_path):
    proc = run_cli("ddpm-eval", f"ckpt_path={tiny_ckpt}", "num_samples=80", "sampler=ddim", "sampler.steps=10",
                   "logger=csv", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert result["sampler"]["name"] == "ddim" and result["sampler"]["steps"] == 10   # a preset, then a key
    assert result["num_generated"] == 80 and result["num_train"] == 1617 and result["num_held_out"] == 180
    assert result["model"]["fd"] > 5 * result["floor"]["fd"] > 0      # an untrained model is far from data
    assert result["model"]["kid"] > result["floor"]["kid"] and result["model"]["kid_std"] >= 0
    assert (tmp_path / "e" / "samples.png").is_file()
    logged = (tmp_path / "e" / "csv" / "metrics.csv").read_text()
    assert "eval/fd" in logged and "eval/floor_fd" in logged
    assert "floor" in proc.stdout and "80 generated" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["num_samples=20"], "num_samples=20 is too small for FD in this 64-dimensional feature space: use at least 65"),
    (["metrics=[fd,inception_score]"], "metrics='inception_score' is not allowed; choose one of: fd, kid, accuracy, nll, classify"),
    (["metrics=[accuracy]"], "'accuracy' needs a class-conditional checkpoint"),
    (["feature=inception"], "inception_weights=None: the Inception feature extractor needs its weights file"),
])
def test_eval_bad_input(tiny_ckpt, tmp_path, args, message):
    cfg = compose_app("eval", [f"ckpt_path={tiny_ckpt}", *args], tmp_path / "e")
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(cfg)
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_eval_checkpoint_of_another_image_size(tmp_path):
    out = tmp_path / "run8"
    cfg = compose_train(["debug=fast", "net=unet_tiny", "data.image_size=8", "sampler.steps=3",
                         "callbacks.sample_grid.num_samples=2"], out)
    train.run(cfg)
    proc = run_cli("ddpm-eval", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "num_samples=80",
                   f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no reference extractor 'digits8'" in last_error_line(proc) and "digits16" in last_error_line(proc)


def test_eval_in_process_with_count_matched_fd(tiny_ckpt, tmp_path):
    """With more samples than the held-out split, FD is also given on held-out-sized subsets."""
    cfg = compose_app("eval", [f"ckpt_path={tiny_ckpt}", "num_samples=360", "sampler.steps=2"], tmp_path)
    result = evaluate(cfg)
    assert result["model"]["fd@180"] > 0 and result["model"]["fd@180_std"] >= 0
    assert result["floor"]["fd@180"] == result["floor"]["fd"]
    assert result["sampler"]["steps"] == 2 and result["sampler"]["name"] == "ddpm"
    assert json.loads((tmp_path / "metrics.json").read_text())["num_generated"] == 360


def test_benchmark_scripts_run_on_a_checkpoint(tiny_ckpt, tmp_path):
    """The README's sampler-quality and nearest-neighbour commands, at toy sizes."""
    import subprocess
    import sys

    from tests.helpers import REPO

    def bench(script, *args):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--ckpt", str(tiny_ckpt), *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    bench("sampler_quality.py", "--num-samples", "70", "--nfe", "2", "--ddpm-nfe", "2", "3",
          "--samplers", "ddpm", "dpmpp_2m_sde", "--out", str(tmp_path / "sq.json"))
    result = json.loads((tmp_path / "sq.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in result["rows"]] == [("ddpm", 2), ("ddpm", 3), ("dpmpp_2m_sde", 2)]
    assert all(r["fd"] > result["floor_fd_held_out"] > 0 for r in result["rows"])
    assert (tmp_path / "sq.png").stat().st_size > 1000
    bench("nearest_neighbours.py", "--num-samples", "8", "--runs", "ddpm:2", "--out", str(tmp_path / "nn.json"))
    rows = json.loads((tmp_path / "nn.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["held-out digits", "ddpm:2"] and rows[1]["n"] == 8
    assert rows[1]["median"] > rows[0]["median"] > 0      # untrained samples lie far from every digit
