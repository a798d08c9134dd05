"""CIFAR-10 loading: two on-disk layouts, decoded once into a uint8 cache, batches made on tensors.

Layouts (detected automatically, ``layout.py``):
- ImageFolder: ``ROOT/{train,test}/<class>/*.jpg|png`` (e.g. ``../shared/data/cifar10-jpeg``);
  class index = sorted folder name, as ``torchvision.datasets.ImageFolder`` does (``imagefolder.py``).
- torchvision CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (or ROOT itself
  being that folder), read by a restricted unpickler (``cifar_batches.py``). ``download=True`` asks
  torchvision to fetch it (online only).

Decoded splits are cached as ``.npz`` (``cache.py``), keyed on the source files, so any change
re-decodes. ``load.py`` puts these together (``load_split``; ``"val"`` is the validation split held
out of ``train``). ``split.py``: the ``Split`` type, its subsets (``subset_indices``,
``random_subset``), the validation split (``validation_indices``, ``training_indices``) and
``check_for_model``. ``batching.py``: batches on
tensors (torch is imported only there, inside the functions).

Bad data is a one-line error, never a silently wrong accuracy: hidden entries (".ipynb_checkpoints")
are ignored, ``train`` and ``test`` must hold the same class folders, and ``check_for_model``
compares the classes and image size with the model's. Batch files are unpickled by a restricted
unpickler: a pickle can run code, a CIFAR batch needs only numpy arrays.
"""
from runtime.metadata import Normalization

from .batching import CIFAR10_NORM, IMAGENET_NORM, augment, iterate_batches, normalize, to_float_nchw
from .cache import default_cache_dir
from .imagefolder import class_folders
from .layout import (
    CIFAR_BATCH_DIR,
    CIFAR_FILES,
    EVAL_SPLITS,
    IMAGE_SIZE,
    IMAGE_SUFFIXES,
    SPLITS,
    detect_layout,
    resolve_data_root,
)
from .load import check_class_folders, image_size_of, load_split
from .split import (
    VAL_SEED,
    Split,
    check_for_model,
    held_out,
    random_subset,
    subset_indices,
    training_indices,
    validation_indices,
    without_validation,
)

__all__ = [
    "CIFAR10_NORM", "CIFAR_BATCH_DIR", "CIFAR_FILES", "EVAL_SPLITS", "IMAGENET_NORM", "IMAGE_SIZE", "IMAGE_SUFFIXES",
    "SPLITS", "VAL_SEED", "Normalization", "Split", "augment", "check_class_folders", "check_for_model",
    "class_folders", "default_cache_dir", "detect_layout", "held_out", "image_size_of", "iterate_batches",
    "load_split", "normalize", "random_subset", "resolve_data_root", "subset_indices", "to_float_nchw",
    "training_indices", "validation_indices", "without_validation",
]
