"""Compression of a fine-tuned run: prune, share, sparsify and distil, then fine-tune.

    tfmp compress runs/full --out runs/half --drop-layers 3 --ffn-keep 0.5

Modules, bottom to top: `backbone` (a BERT backbone with pruned heads and tied
layers), `prune` (the plan and the smaller student holding the teacher's weights),
`importance` (what to keep, measured on training batches), `sparsity` (magnitude
pruning held through training), `distil` (the teacher's logits in the student's
loss), `options` (`CompressConfig`), `run` (`compress`: a run directory out).
"""

from tfmp.compress.backbone import CompactBertBackbone
from tfmp.compress.options import CompressConfig
from tfmp.compress.run import compress

__all__ = ["CompactBertBackbone", "CompressConfig", "compress"]
