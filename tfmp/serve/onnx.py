"""Runs an exported .onnx classifier with ONNX Runtime (no TensorFlow import).

    probabilities = OnnxClassifier("onnx/model_int8.onnx")(features)
"""

import numpy as np

from tfmp.serve.wordpiece import TOKEN_KEYS


class OnnxClassifier:
    """Token arrays in, float32 probabilities out (softmax of the logits in float64)."""

    def __init__(self, path, threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(path, options,
                                                     providers=["CPUExecutionProvider"])
        self._names = {}
        for node in self._session.get_inputs():
            key = next((k for k in TOKEN_KEYS if k in node.name), None)
            if key is None:
                raise ValueError(f"{path}: unexpected input {node.name!r}")
            self._names[key] = node.name

    def __call__(self, features):
        feed = {name: np.asarray(features[k], np.int32) for k, name in self._names.items()}
        logits = np.asarray(self._session.run(None, feed)[0], np.float64)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
