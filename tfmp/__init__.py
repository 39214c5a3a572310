"""tfmp: mixed-precision fine-tuning of BERT text classifiers with TensorFlow and Keras 3.

The public names below are imported on first use (PEP 562), so `import tfmp` and the
commands that never need TensorFlow (`tfmp predict` on a TFLite variant, `tfmp --help`)
do not pay for importing it.
"""

import importlib
import importlib.util
import sys
import types

from tfmp import hardware as _hardware
from tfmp.version import VERSION as __version__

_hardware.prefer_onednn()  # before anything imports TensorFlow (tfmp.hardware)

# {public name: the module that defines it}
_EXPORTS = {
    "BertClassifier": "tfmp.models",
    "CompressConfig": "tfmp.compress.options",
    "InputError": "tfmp.errors",
    "LabelMap": "tfmp.data",
    "LossScaleOptimizer": "tfmp.optimizer",
    "Policy": "tfmp.precision",
    "PolicyError": "tfmp.errors",
    "TrainConfig": "tfmp.config",
    "TrainingStopped": "tfmp.errors",
    "UserError": "tfmp.errors",
    "WarmupLinearDecay": "tfmp.optimizer",
    "build_optimizer": "tfmp.optimizer",
    "compile_classifier": "tfmp.train",
    "evaluate": "tfmp.scoring",
    "load_classifier": "tfmp.models",
    "load_examples": "tfmp.data",
    "load_model": "tfmp.models",
    "make_dataset": "tfmp.data",
    "policy_scope": "tfmp.precision",
    "rebuild_float32": "tfmp.models",
    "resolve": "tfmp.precision",
    "set_global_policy": "tfmp.precision",
    "split_examples": "tfmp.data",
    "train": "tfmp.train",
}

__all__ = sorted(list(_EXPORTS) + ["compress"])  # the callable package tfmp.compress



def __getattr__(name):
    if name not in _EXPORTS:
        # `import tfmp; tfmp.models...` worked when this file imported its submodules.
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'tfmp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


class _Package(types.ModuleType):
    """`tfmp.train` stays the function when its module `tfmp.train` is imported."""

    def __setattr__(self, name, value):
        # The import system sets a package's attribute to each submodule it loads; the
        # eager `from tfmp.train import train` this replaces rebound it to the function.
        if name == "train" and isinstance(value, types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
