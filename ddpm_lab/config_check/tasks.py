"""What each ddpm-edit task allows (conf/task/*.yaml), per `_target_`.

A new task: add `"<its _target_>": Section({key: rule, ...})` to TASK. A task without a table
still plugs in: its keys are checked against its class's parameters (values unchecked), as any
`_target_` group. Checks across keys (exactly one of an edit's label / prompt / target; eta > 0
with a noisy y) are the task classes' own, at instantiation.
"""

from __future__ import annotations

from pathlib import Path

from ddpm_lab.config_check.rules import (
    LABEL,
    PROBABILITY,
    PROMPT,
    Choice,
    Group,
    Section,
    boolean,
    custom,
    integer,
    names,
    number,
    string,
)
from ddpm_lab.tasks.masks import MASK_SUFFIXES, NAMED_MASKS

CONDITION = {"label": LABEL, "prompt": PROMPT, "guidance_scale": number(0, null=True)}


def _mask_ok(value: object) -> bool:
    return isinstance(value, str) and (value in NAMED_MASKS or Path(value).suffix.lower() in MASK_SUFFIXES)


MASK = custom(f"one of {', '.join(NAMED_MASKS)} or a mask image ({', '.join(MASK_SUFFIXES)})", _mask_ok)
_T0 = number(0, 1, lo_open=True, range_msg="{key}={value} must lie in (0, 1] (the fraction of the way from the "
                                            "data to the noise)")
_DDNM = {"steps": integer(1), "eta": number(0, 1), "clip_x0": boolean(null=True)}


TASK = Group({
    "ddpm_lab.tasks.inpaint.Inpaint": Section({
        "mask": MASK,
        "known_fraction": PROBABILITY, "steps": integer(1, null=True), "jump_length": integer(1),
        "jump_n_sample": integer(1), "eta": number(0, 1), "clip_x0": boolean(null=True), **CONDITION}),
    "ddpm_lab.tasks.sdedit.SDEdit": Section({
        "t0": _T0,
        "corrupt": Choice(names("ddpm_lab.tasks.sdedit", "CORRUPTIONS")),
        "stroke_size": integer(1), "stroke_levels": integer(2), "noise_sigma": number(0),
        "sampler": Choice(names("ddpm_lab.diffusion.samplers", "SAMPLERS"), null=True),
        "steps": integer(1, null=True), "eta": number(0, 1, null=True), **CONDITION}),
    "ddpm_lab.tasks.restore.SuperResolution": Section({**_DDNM, "factor": integer(2)}),
    "ddpm_lab.tasks.restore.Denoise": Section({**_DDNM, "sigma": number(0)}),
    "ddpm_lab.tasks.restore.InpaintDDNM": Section({**_DDNM, "mask": MASK, "known_fraction": PROBABILITY}),
    "ddpm_lab.tasks.edit.EditByInversion": Section({
        "label": integer(0, null=True), "prompt": string(null=True),
        "target": Choice(names("ddpm_lab.tasks.edit", "TARGETS"), null=True),
        "guidance_scale": number(0, null=True), "steps": integer(1), "t0": _T0,
        "clip_x0": boolean(null=True)}),
})
