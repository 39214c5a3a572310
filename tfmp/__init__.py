"""tfmp: mixed-precision fine-tuning of BERT text classifiers with TensorFlow and Keras 3."""

from tfmp.version import VERSION as __version__

from tfmp.data import LabelMap, load_examples, make_dataset, split_examples
from tfmp.errors import InputError, PolicyError, TrainingStopped, UserError
from tfmp.models import BertClassifier, load_classifier, load_model, rebuild_float32
from tfmp.optimizer import LossScaleOptimizer, WarmupLinearDecay, build_optimizer
from tfmp.precision import Policy, policy_scope, resolve, set_global_policy
from tfmp.config import TrainConfig
from tfmp.scoring import evaluate
from tfmp.train import compile_classifier, train
from tfmp.compress import CompressConfig, compress

__all__ = [
    "BertClassifier",
    "CompressConfig",
    "InputError",
    "LabelMap",
    "LossScaleOptimizer",
    "Policy",
    "PolicyError",
    "TrainConfig",
    "TrainingStopped",
    "UserError",
    "WarmupLinearDecay",
    "build_optimizer",
    "compile_classifier",
    "compress",
    "evaluate",
    "load_classifier",
    "load_examples",
    "load_model",
    "make_dataset",
    "policy_scope",
    "rebuild_float32",
    "resolve",
    "set_global_policy",
    "split_examples",
    "train",
]
