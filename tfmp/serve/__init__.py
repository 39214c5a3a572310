"""Serving an export: `tfmp predict`, and the runners `tfmp tradeoffs` measures.

    runner = runners.open_variant("saved_models/demo", "tflite_int8")
    probabilities = runner(["@united lost my bag again"])      # float32 [n, classes]

`wordpiece.py` tokenizes as keras-hub's graph does, without TensorFlow; `litert.py`
runs a .tflite file; `runners.py` opens any exported variant as a function from
texts to probabilities (TFLite and ONNX ones never import TensorFlow or Keras);
`inputs.py` streams texts from lines, CSV, TSV or JSONL; `predict.py` is the command.
Nothing in this package imports TensorFlow at module level.
"""
