"""The names of the model zoo's built-in architectures (``toolchain.models``), in a module of its
own so that the command line can list them without importing torch."""

MODEL_NAMES = ("resnet20", "mobilenetv2", "vgg13")
