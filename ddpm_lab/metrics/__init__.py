"""Sample-quality metrics: reference feature extractors, FD / KID through torchmetrics, accuracy, and
the video judge of clips against their prompts."""

from ddpm_lab.metrics.distances import class_accuracy, frechet_distance, kernel_distance
from ddpm_lab.metrics.reference import (
    FeatureExtractor,
    ReferenceClassifier,
    load_reference,
    reference_extractor,
)
from ddpm_lab.metrics.video import (
    ClipScores,
    controls,
    judge_clips,
    judge_real_and_controls,
    summarise,
)

__all__ = ["ClipScores", "FeatureExtractor", "ReferenceClassifier", "class_accuracy", "controls",
           "frechet_distance", "judge_clips", "judge_real_and_controls", "kernel_distance", "load_reference",
           "reference_extractor", "summarise"]
