"""Runs a .tflite classifier with ai-edge-litert's interpreter (no TensorFlow import).

    probabilities = TFLiteClassifier("tflite/model_int8.tflite").predict(features)

Inputs are the family's `token_ids`, `padding_mask`[, `segment_ids`] (int32 [batch, seq_len]); the
output is float32 probabilities [batch, num_classes]. The batch is resized as needed.
"""

import numpy as np

from tfmp.serve.wordpiece import TOKEN_KEYS


class TFLiteClassifier:
    """Runs an exported `.tflite` file with ai-edge-litert's interpreter.

    Args:
        path: str. The `.tflite` file.
        num_threads: int or None. Interpreter threads (None: the runtime's default).
    """

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self._inputs = {}
        for detail in self._interpreter.get_input_details():
            key = next((k for k in TOKEN_KEYS if k in detail["name"]), None)
            if key is None:
                raise ValueError(f"{path}: unexpected input {detail['name']!r}")
            self._inputs[key] = detail
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    @property
    def sequence_length(self):
        return int(next(iter(self._inputs.values()))["shape_signature"][1])

    def _resize(self, batch):
        if batch == self._batch:
            return
        for detail in self._inputs.values():
            self._interpreter.resize_tensor_input(
                detail["index"], [batch, detail["shape_signature"][1]]
            )
        self._interpreter.allocate_tensors()
        self._batch = batch

    def predict(self, features, batch_size=32):
        """float32 [n, num_classes] probabilities of int32 [n, seq_len] token arrays."""
        n = len(features["token_ids"])
        outputs = []
        for start in range(0, n, batch_size):
            chunk = {k: np.asarray(features[k][start:start + batch_size], np.int32)
                     for k in self._inputs}
            self._resize(len(chunk["token_ids"]))
            for key, detail in self._inputs.items():
                self._interpreter.set_tensor(detail["index"], chunk[key])
            self._interpreter.invoke()
            outputs.append(self._interpreter.get_tensor(self._output["index"]).copy())
        return np.concatenate(outputs)
