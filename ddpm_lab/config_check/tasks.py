"""What each ddpm-edit task allows (conf/task/*.yaml), per `_target_`.

A new task: add `"<its _target_>": Section({key: rule, ...})` to TASK. A task without a table
still plugs in: its keys are checked against its class's parameters (values unchecked), as any
`_target_` group. Checks across keys (exactly one of an edit's label / prompt / target; eta > 0
with a noisy y) are the task classes' own, at instantiation.
"""

from __future__ import annotations

from ddpm_lab.config_check.rules import (
    PROBABILITY,
    Choice,
    Group,
    Section,
    boolean,
    integer,
    names,
    number,
    string,
)

_DDNM = {"steps": integer(1), "eta": number(0, 1), "clip_x0": boolean(null=True)}

TASK = Group({
    "ddpm_lab.tasks.restore.SuperResolution": Section({**_DDNM, "factor": integer(2)}),
    "ddpm_lab.tasks.restore.Denoise": Section({**_DDNM, "sigma": number(0)}),
    "ddpm_lab.tasks.restore.InpaintDDNM": Section({
        **_DDNM, "mask": string(desc="a mask name or a mask image path"), "known_fraction": PROBABILITY}),
    "ddpm_lab.tasks.edit.EditByInversion": Section({
        "label": integer(0, null=True), "prompt": string(null=True),
        "target": Choice(names("ddpm_lab.tasks.edit", "TARGETS"), null=True),
        "guidance_scale": number(0, null=True), "steps": integer(1)}),
})
