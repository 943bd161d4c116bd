"""Downstream tasks solved by a trained diffusion checkpoint without retraining (`ddpm-edit`).

Each task is a class built from `conf/task/<name>.yaml` (`_target_`) whose `run` takes the
trained module and the input images and returns a `TaskResult`; see `base.py`.
"""

from ddpm_lab.tasks.base import Task, TaskInputs, TaskResult

__all__ = ["Task", "TaskInputs", "TaskResult"]
