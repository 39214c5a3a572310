"""A classifier as a TF Serving SavedModel: raw strings in, probabilities and labels out.

    save_serving(classifier, ("negative", "neutral", "positive"), "serving/1")

The SavedModel needs only `tensorflow` and `tensorflow_text` to load (tokenization
runs in-graph, through keras-hub's preprocessor); it has two signatures:

    serving_default(text: string [batch])                       raw strings
    tokens(token_ids, padding_mask[, segment_ids]: int32 [batch, seq])   pre-tokenized
        (the family's inputs, `tfmp.families`: DistilBERT, RoBERTa, XLM-R have no segment_ids)
        -> probabilities: float32 [batch, num_classes], label_id: int64 [batch],
           label: string [batch]

`assets/` holds the tokenizer's files (vocab.txt; vocab.json and merges.txt; the
SentencePiece model) for clients that tokenize themselves,
and `assets.extra/tf_serving_warmup_requests` holds PredictionLog records that TF
Serving replays on load so the first real request does not pay for graph warm-up.

Two export variants: `savedmodel_fp32` (`serving/1`, float32 compute, the CPU form)
`savedmodel_fp16` (`serving_fp16/1`, mixed_float16 compute, for GPU serving) and
`savedmodel_bf16` (`serving_bf16/1`, mixed_bfloat16 compute, for CPUs with bfloat16
dot products, TPUs and recent GPUs).
"""

import os

import tensorflow as tf

from tfmp import families, models, precision
from tfmp.errors import UserError
from tfmp.export.gate import Gate
from tfmp.export.variant import Variant

SERVING_SIGNATURE = "serving_default"
TOKENS_SIGNATURE = "tokens"
# Requests TF Serving replays on load: one single example and one small batch, so both
# the batch-1 and the batched code paths are warm.
WARMUP_BATCHES = (
    ("warm-up request",),
    ("warm-up request", "a longer warm-up request with a few more words in it", "",
     "ok", "!!", "12345", "thanks", "no"),
)


def features_of(classifier):
    """The token inputs of `classifier`'s backbone (its family's, `tfmp.families`)."""
    return families.by_backbone(classifier.backbone).features


def token_specs(sequence_length=None, features=families.FAMILIES["bert"].features):
    """int32 [batch, sequence_length] specs of the token inputs (None: any length)."""
    return {k: tf.TensorSpec([None, sequence_length], tf.int32, name=k) for k in features}


class ServingModule(tf.Module):
    """The classifier's backbone and head, its preprocessor, and the label names.

    Args:
        classifier: `tfmp.BertClassifier` built under the policy to serve in; its
            logits must be float32.
        label_names: sequence of str. Name of class i at position i.
        vocabulary_file: str, list of str or None. The tokenizer's files, shipped as assets.
    """

    def __init__(self, classifier, label_names, vocabulary_file=None):
        super().__init__(name="tfmp_classifier")
        self._label_names = tf.constant(list(label_names), dtype=tf.string)
        if vocabulary_file:
            paths = [vocabulary_file] if isinstance(vocabulary_file, str) else vocabulary_file
            self.vocabulary = [tf.saved_model.Asset(p) for p in paths]
        preprocessor = classifier.preprocessor
        features = features_of(classifier)
        # keras-hub's byte-pair tokenizer (RoBERTa) keeps its vocabulary, merges and a
        # word cache in lookup tables the graph reads: the SavedModel must hold them.
        self.tokenizer_tables = [v for v in vars(preprocessor.tokenizer).values()
                                 if isinstance(v, tf.__internal__.tracking.Trackable)
                                 and not isinstance(v, tf.Variable)]

        def classify(features):
            logits = classifier(features, training=False)
            # Softmax in float32 whatever the compute dtype: small probabilities matter
            # (precision.FLOAT32_ISLANDS["served softmax"]).
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            label_id = tf.argmax(probabilities, axis=-1)
            return {
                "probabilities": probabilities,
                "label_id": label_id,
                "label": tf.gather(self._label_names, label_id),
            }

        def serve_text(text):
            tokens = preprocessor(text)
            return classify({k: tf.cast(tokens[k], tf.int32) for k in features})

        self.serve_text = tf.function(
            serve_text, input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        self.serve_tokens = tf.function(classify, input_signature=[token_specs(None, features)])

    def signatures(self):
        signatures = {
            SERVING_SIGNATURE: self.serve_text.get_concrete_function(),
            TOKENS_SIGNATURE: self.serve_tokens.get_concrete_function(),
        }
        # Track the tf.Variables the traced functions read (as keras.export does), not
        # the Keras variables wrapping them: with only the wrappers tracked, session-
        # based loaders (TF Serving, `saved_model_cli run`) restore other handles and
        # fail with "Could not find variable pooled_dense/bias".
        captured = {}
        for function in signatures.values():
            captured.update((id(v), v) for v in function.variables)
        self.captured_variables = list(captured.values())
        return signatures


def save_serving(classifier, label_names, path, vocabulary_file=None):
    """Writes the SavedModel of `classifier` to `path` (a `<base>/<version>` dir)."""
    module = ServingModule(classifier, label_names, vocabulary_file)
    signatures = module.signatures()
    tf.saved_model.save(module, path, signatures=signatures)
    write_warmup_requests(path)
    return path


def write_warmup_requests(path):
    """Writes `assets.extra/tf_serving_warmup_requests` as TF Serving reads it."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        raise UserError(
            "Writing TF Serving warm-up requests needs tensorflow-serving-api: run "
            "`pip install tensorflow-serving-api==2.21.0` (it keeps tensorflow and "
            "protobuf as they are), or export without the SavedModel variants "
            "(--variants tflite_fp32,tflite_fp16,tflite_int8,hf)."
        ) from None

    directory = os.path.join(path, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "tf_serving_warmup_requests")) as w:
        for texts in WARMUP_BATCHES:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=SERVING_SIGNATURE)
            )
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(list(texts), tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            w.write(log.SerializeToString())


def read(path):
    """Predictor of the SavedModel at `path`: raw strings -> probabilities."""
    serve = tf.saved_model.load(path).signatures[SERVING_SIGNATURE]
    return lambda texts: serve(text=tf.constant(texts))["probabilities"]


def _writer(stored):
    """`write(ctx)` of the SavedModel computing in `serving_policy(stored)`."""
    def write(ctx):
        policy = precision.serving_policy(stored)
        # The pipeline's float32 copy serves float32 as is; other policies rebuild the
        # run's model (variables are float32 under every policy: the copy is exact).
        model = (ctx.float32 if ctx.float32.backbone.dtype_policy.name == policy
                 else models.rebuild(ctx.classifier, policy))
        save_serving(model, ctx.label_names, ctx.path, ctx.tokenizer_files)

    return write


# Same float32 graph as Keras, so only summation order may differ.
FP32 = Variant(name="savedmodel_fp32", path="serving/1", write=_writer("fp32"), read=read,
               gate=Gate(min_agreement=1.0, max_probability_difference=1e-5),
               inputs="texts")
FP16 = Variant(name="savedmodel_fp16", path="serving_fp16/1", write=_writer("fp16"),
               read=read, gate=Gate(min_agreement=0.995), inputs="texts")
# bfloat16 keeps 8 significant bits (float16: 11), so its probabilities drift more;
# the argmax must still agree as often as float16's.
BF16 = Variant(name="savedmodel_bf16", path="serving_bf16/1", write=_writer("bf16"),
               read=read, gate=Gate(min_agreement=0.995), inputs="texts")
