"""Model factories for the "bring your own model" tests (``--model own_models:NAME``; the tests put
this folder on sys.path)."""
import torch.nn as nn


def resnet18_cifar() -> nn.Module:
    """torchvision's ResNet-18 with 10 outputs, as a user brings it."""
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def tiny_cnn() -> nn.Module:
    """A small model of 4 outputs (the class count comes from the model, not from a default)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def tiny_cnn10() -> nn.Module:
    """The small model with CIFAR-10's 10 outputs (the pipeline test)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def not_a_module():
    return "a string"


def fails():
    raise ValueError("no weights here")


NOT_CALLABLE = 3


def fixed_32() -> nn.Module:
    """Flattens a 32x32 feature map: takes 32x32 images only."""
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 32 * 32, 4))
