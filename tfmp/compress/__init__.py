"""Compression of a fine-tuned run: prune, share, sparsify and distil, then fine-tune.

    tfmp compress runs/full --out runs/half --drop-layers 3 --ffn-keep 0.5

Modules, bottom to top: `backbone` (a BERT backbone with pruned heads and tied
layers), `prune` (the plan and the smaller student holding the teacher's weights),
`importance` (what to keep, measured on training batches), `sparsity` (magnitude
pruning held through training), `distil` (the teacher's logits in the student's
loss), `options` (`CompressConfig`), `run` (`compress`: a run directory out).
"""

import importlib
import sys
import types

# Imported on first use, so `tfmp predict` (whose parser names `compress` and reads
# `CompressConfig`'s fields) never loads Keras or TensorFlow through this package.
_EXPORTS = {"CompactBertBackbone": "tfmp.compress.backbone",
            "CompressConfig": "tfmp.compress.options", "compress": "tfmp.compress.run"}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tfmp.compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = ["CompactBertBackbone", "CompressConfig", "compress"]


class _CallablePackage(types.ModuleType):
    """`tfmp.compress(cfg)` runs `tfmp.compress.run.compress`: the package is the command,
    as `tfmp.train` is, while `tfmp.compress.prune` and the rest stay its modules."""

    def __call__(self, cfg, verbose=1):
        return self.compress(cfg, verbose=verbose)


sys.modules[__name__].__class__ = _CallablePackage
