"""Downstream accuracy: a classifier trained only on some (possibly generated) labelled images,
tested on the real test set. It asks whether the images carry what the task needs."""
from __future__ import annotations

import torch

from synthdata.classifiers import predict_logits, train_classifier
from synthdata.metrics.stats import Accuracy, accuracy_with_ci
from synthdata.spec import ClassifierSpec


def downstream_accuracy(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    spec: ClassifierSpec,
    *,
    seed: int,
    device: str = "cpu",
) -> Accuracy:
    """Train on (train_images, train_labels), return accuracy on the real test set with a 95% interval."""
    model = train_classifier(spec, train_images, train_labels, num_classes, seed=seed, device=device)
    pred = predict_logits(model, test_images, device=device).argmax(1)
    return accuracy_with_ci(int((pred == test_labels).sum()), len(test_labels))

