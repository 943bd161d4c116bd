"""Sample-quality metrics: reference feature extractors, FD / KID through torchmetrics, accuracy."""

from ddpm_lab.metrics.distances import class_accuracy, frechet_distance, kernel_distance
from ddpm_lab.metrics.reference import (
    FeatureExtractor,
    ReferenceClassifier,
    load_reference,
    reference_extractor,
)

__all__ = ["FeatureExtractor", "ReferenceClassifier", "class_accuracy", "frechet_distance",
           "kernel_distance", "load_reference", "reference_extractor"]
