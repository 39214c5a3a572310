"""Dense and EinsumDense as 2-D matmuls that Grappler fuses with their bias and GELU.

Tolerances. The fused and Keras' forms multiply the same operands; the products differ
only in the order oneDNN sums them and in the GELU's own code (oneDNN's tanh against
Eigen's), so float32 logits and gradients agree within 1e-5 relative (measured on the
tiny BERT: logits equal, gradients 3e-8). Under mixed_bfloat16 the fused epilogue adds
the bias and applies the GELU to the float32 accumulator before rounding, where Keras
rounds the product, adds and applies the GELU in bfloat16 (8 significant bits, 2^-8
relative per rounding): held within 3e-2 relative (measured: logits 1e-4, the worst
gradient 2e-3; each gradient against at least 1% of the global gradient norm, as a
gradient near zero in exact arithmetic is rounding noise).
"""

import os

import keras
import numpy as np
import pytest

from tfmp import fused_matmul, hardware, models

SEQ = 16


def _inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, SEQ), "int32")
    mask[:, SEQ // 2:] = rng.integers(0, 2, (batch, SEQ - SEQ // 2))
    mask = np.sort(mask, axis=1)[:, ::-1].copy()
    return {"token_ids": rng.integers(5, 90, (batch, SEQ)).astype("int32") * mask,
            "segment_ids": np.zeros((batch, SEQ), "int32"), "padding_mask": mask}


def _specs():
    import tensorflow as tf

    return {k: tf.TensorSpec([None, None], tf.int32) for k in _inputs()}


def _products(model):
    return [l for l in model._flatten_layers()
            if isinstance(l, (keras.layers.Dense, keras.layers.EinsumDense))]


@pytest.mark.parametrize("equation,bias_axes,expected", [
    ("abc,cde->abde", "de", ("ab", "c", "de")),      # keras-hub's query, key, value
    ("abcd,cde->abe", "e", ("ab", "cd", "e")),       # the attention output
    ("ab,bc->ac", None, ("a", "b", "c")),
    ("abc,cde->abde", "e", None),                    # bias on part of the output
    ("abc,dc->abd", "d", None),                      # transposed kernel
    ("...b,bc->...c", "c", None),
    ("abc,cd->abdc", None, None),
])
def test_matmul_shape_recognises_only_einsums_that_are_2d_matmuls(equation, bias_axes,
                                                                   expected):
    assert fused_matmul.matmul_shape(equation, bias_axes) == expected


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir):
    return models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=SEQ,
                                  policy="float32")


def test_every_classifier_gets_fused_products_that_keep_their_config(classifier):
    products = _products(classifier)
    assert len(products) == 14  # 2 layers x (4 attention, 2 feed-forward), pooler, logits
    assert all(type(l) in fused_matmul._ORIGINAL for l in products)
    for layer in products:
        original = fused_matmul._ORIGINAL[type(layer)]
        assert type(layer).__name__ == original.__name__
        assert keras.saving.serialize_keras_object(layer)["class_name"] == original.__name__


def _optimized_fusions(function):
    """(op, fused ops) of every fused node Grappler makes of `function` on the CPU."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.framework import meta_graph
    from tensorflow.python.grappler import tf_optimizer

    with function.graph.as_default():
        graph = meta_graph.export_scoped_meta_graph(graph=function.graph)[0]
    for node in graph.graph_def.node:  # placed, as the runtime does before Grappler
        node.device = "/job:localhost/replica:0/task:0/device:CPU:0"
    for output in function.outputs:
        graph.collection_def["train_op"].node_list.value.append(output.op.name)
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.min_graph_nodes = -1
    optimized = tf_optimizer.OptimizeGraph(config, graph)
    return [(n.op, tuple(s.decode() for s in n.attr["fused_ops"].list.s))
            for n in optimized.node if "Fused" in n.op]


def _traced(model, training):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=training)).get_concrete_function(_specs())


def test_grappler_fuses_every_product_with_its_bias_and_the_gelu(classifier):
    fused = _optimized_fusions(_traced(classifier, training=False))
    assert len(fused) == 14
    # Grappler fuses the GELU into the product only where oneDNN is on (TensorFlow's
    # default on AVX512-VNNI/BF16 or AMX CPUs); elsewhere each product keeps its bias.
    gelu = 2 if hardware.onednn_enabled() else 0  # one per layer
    assert [f for f in fused if "GeluApproximate" in f[1]] == [
        ("_FusedMatMul", ("BiasAdd", "GeluApproximate"))] * gelu
    assert all(f[1][0] == "BiasAdd" for f in fused)
    fused_matmul.use_fused_matmuls(classifier, on=False)
    try:
        keras_fused = _optimized_fusions(_traced(classifier, training=False))
    finally:
        fused_matmul.use_fused_matmuls(classifier, on=True)
    assert len(keras_fused) == 2  # only the 2-D pooler and logits, and no GELU
    assert not [f for f in keras_fused if "GeluApproximate" in f[1]]


def test_a_training_call_keeps_keras_products(classifier):
    inference = {op.type for op in _traced(classifier, training=False).graph.get_operations()}
    training = {op.type for op in _traced(classifier, training=True).graph.get_operations()}
    assert "Einsum" not in inference and "Einsum" in training


def _logits(model, x):
    import tensorflow as tf

    # Traced without a gradient tape: the form the runtime fuses (a tape keeps the
    # pre-activations, and Grappler leaves their products unfused).
    return np.asarray(tf.function(lambda x: model(x, training=False))(x), "float32")


def _grads(model, x):
    import tensorflow as tf

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(model(x, training=False), "float32") ** 2)
        return tape.gradient(loss, model.trainable_variables)

    return [np.asarray(tf.convert_to_tensor(g), "float32") for g in run(x)]


@pytest.mark.parametrize("policy,rtol", [("float32", 1e-5), ("mixed_bfloat16", 3e-2)])
def test_fused_logits_and_gradients_match_keras(classifier, policy, rtol):
    model = models.rebuild(classifier, policy)
    x = _inputs()
    fused_logits, fused_grads = _logits(model, x), _grads(model, x)
    fused_matmul.use_fused_matmuls(model, on=False)
    logits, grads = _logits(model, x), _grads(model, x)
    assert not any(type(l) in fused_matmul._ORIGINAL for l in _products(model))
    assert np.all(np.isfinite(fused_logits))
    assert np.linalg.norm(fused_logits - logits) <= rtol * np.linalg.norm(logits)
    scale = np.sqrt(sum(np.sum(g * g) for g in grads))
    assert scale > 0
    for fused, keras_grad in zip(fused_grads, grads):
        assert fused.shape == keras_grad.shape
        assert np.linalg.norm(fused - keras_grad) <= rtol * max(np.linalg.norm(keras_grad),
                                                                  1e-2 * scale)


def test_keras_quantize_still_quantizes_the_swapped_layers(tiny_bert_dir):
    # Keras quantizes only its own classes (type(layer) is Dense); the swap must not
    # make `model.quantize` skip them.
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=SEQ,
                                   policy="float32")
    before = np.asarray(model(_inputs(), training=False))
    model.backbone.quantize("int8")
    products = _products(model.backbone)
    assert len(products) == 2 * 6 + 1  # with the pooler
    assert all(l.dtype_policy.quantization_mode == "int8" and l._kernel.dtype == "int8"
               for l in products)
    assert all(type(l) in fused_matmul._ORIGINAL for l in products)
    after = np.asarray(model(_inputs(), training=False))
    # int8 weights: per-channel abs-max rounding, about 1% of each product
    assert np.linalg.norm(after - before) <= 0.1 * np.linalg.norm(before)


def test_the_tflite_export_traces_keras_products_and_leaves_the_model_fused(classifier):
    from tfmp.export import tflite

    def matmuls(function):  # 2-D MatMul ops: every product in the fused form
        return sum(op.type == "MatMul" for op in function.graph.get_operations())

    assert matmuls(_traced(classifier, training=False)) == 14
    # Keras' form: only the 6 Dense layers (2 a layer, pooler, logits) are MatMuls; its 8
    # EinsumDense layers are einsums.
    assert matmuls(tflite._concrete_function(classifier)) == 6
    assert all(type(l) in fused_matmul._ORIGINAL for l in _products(classifier))


@pytest.mark.parametrize("flag", ["0", "1"])
def test_onednn_enabled_reads_what_tensorflow_runs(flag):
    import subprocess
    import sys

    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", "from tfmp import hardware; "
                          "print(hardware.onednn_enabled())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split()[-1] == {"0": "False", "1": "True"}[flag], out.stderr[-2000:]


def test_prefer_onednn_sets_the_flag_only_before_tensorflow_and_never_over_the_user(
        monkeypatch):
    monkeypatch.setattr(hardware, "_read_cpuinfo", lambda: ("", {"avx2", "fma"}))
    environ = {}
    assert hardware.prefer_onednn(environ, modules={}) and environ == {
        "TF_ENABLE_ONEDNN_OPTS": "1"}
    for environ, modules in (({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),  # the user's choice
                             ({}, {"tensorflow": object()})):     # too late to matter
        before = dict(environ)
        assert not hardware.prefer_onednn(environ, modules) and environ == before
    monkeypatch.setattr(hardware, "_read_cpuinfo", lambda: ("", {"neon"}))  # not x86 AVX2
    environ = {}
    assert not hardware.prefer_onednn(environ, modules={}) and environ == {}
