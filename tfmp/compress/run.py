"""`compress`: a finished run (the teacher) in, a smaller fine-tuned run directory out.

    from tfmp.compress import CompressConfig, compress
    result = compress(CompressConfig(teacher="runs/full", out="runs/half",
                                     drop_layers=3, ffn_keep=0.5))

The student is built from the teacher (`tfmp.compress.prune`, chosen by
`tfmp.compress.importance`, tied by `share_layers`, sparsified by `sparsity`) and
fine-tuned by `tfmp.train.train` itself, on the teacher run's data, splits, seed and
precision policy, against the teacher's logits (`tfmp.compress.distil`). So the
result is an ordinary run directory: report, TensorBoard logs, checkpoints, the
`COMPLETE` marker, and `tfmp export` takes it. A compression killed at any moment
resumes when the same command is run again: the plan (which layers, neurons and
heads) is kept in every checkpoint and reused, not measured again.

Everything the user got wrong is refused (exit 2) before anything is written.
"""

import dataclasses
import json
import os

from tfmp import data, families, files, models, precision, rundir
from tfmp.compress import distil
from tfmp.compress import hidden
from tfmp.compress import importance
from tfmp.compress import sparsity
from tfmp.compress import transfer
from tfmp.compress import vocab
from tfmp.compress.options import CompressConfig
from tfmp.compress.prune import Plan, build_student, depth_layers
from tfmp.config import TrainConfig
from tfmp.errors import UserError
from tfmp.train import train


def teacher_config(cfg):
    """The teacher run's `TrainConfig`, made the student's (out, epochs, lr, overwrite)."""
    files.check_complete(cfg.teacher, "run")
    path = os.path.join(cfg.teacher, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"Cannot read the teacher's run config '{path}': {e}.") from None
    config = TrainConfig.from_json(saved, path)
    changes = {"out": os.fspath(cfg.out), "overwrite": cfg.overwrite}
    for name in ("epochs", "lr", "checkpoint_every"):
        if getattr(cfg, name) is not None:
            changes[name] = getattr(cfg, name)
    return dataclasses.replace(config, **changes)


def reseed(run, seed):
    """The student's own `seed` for dropout and batch order; the splits stay the teacher's.

    train's batch order is a function of (config.seed, epoch) over the training split, and
    config.seed must stay the teacher's (it also draws the splits), so the training split is
    put in an order drawn from `seed` (the same on resume): the same examples, other batches.
    """
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    train = run.splits.train
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(train))
    train.texts[:] = [train.texts[i] for i in order]
    train.label_ids[:] = train.label_ids[order]
    if train.indices is not None:
        train.indices[:] = train.indices[order]


class _Source:
    """What `train` builds the student with (its `source` argument)."""

    def __init__(self, cfg, teacher, transfer_texts=()):
        self.cfg, self.teacher = cfg, teacher
        self.transfer = list(transfer_texts)  # `transfer.choose`: soft targets, no label
        self.record = None
        self.masks = []
        self._float32 = None

    @property
    def float32(self):
        if self._float32 is None:
            self._float32 = models.rebuild(self.teacher, precision.TEACHER_POLICY)
        return self._float32

    def _plan(self, run):
        saved = (run.resume.state.get("model_source") or {}) if run.resume else {}
        if saved:
            if saved.get("options") != self.cfg.options():
                raise UserError(f"'{run.out}' holds an interrupted compression with other "
                                f"options ({saved.get('options')}); run it with those, or "
                                "pass --overwrite to start over.")
            return Plan.from_json(saved["plan"]), saved.get("importance")
        cfg, teacher = self.cfg, self.float32
        batches = importance.probe_batches(teacher, run.splits.train, cfg.importance_examples,
                                           seed=run.config.seed)
        depth = len(depth_layers(teacher.backbone))
        measured = {"examples": sum(len(y) for _, y in batches),
                    "method": "first-order Taylor (units), greedy measured loss (layers)"}
        if cfg.keep_layers is not None:
            keep = tuple(cfg.keep_layers)
        else:
            keep, measured["layer_steps"] = importance.choose_layers(
                teacher, batches, cfg.drop_layers)
        ffn = heads = None
        if cfg.ffn_keep < 1 or cfg.heads_keep < 1:
            scores = importance.unit_scores(teacher, batches, keep)
            if cfg.ffn_keep < 1:
                ffn = importance.top_units(scores["ffn"], cfg.ffn_keep)
            if cfg.heads_keep < 1:
                heads = importance.top_units(scores["heads"], cfg.heads_keep)
        run.log(f"Student: layers {list(keep)} of {depth}"
                + (f", {len(ffn[0])} FFN neurons a layer" if ffn else "")
                + (f", {len(heads[0])} heads a layer" if heads else "")
                + (f", groups of {cfg.share_layers} tied" if cfg.share_layers > 1 else ""))
        kept = (vocab.used_tokens(teacher.preprocessor,
                                  list(run.splits.train.texts) + self.transfer)
                if cfg.prune_vocab else None)
        if kept:
            run.log(f"Vocabulary: {len(kept)} of "
                    f"{teacher.preprocessor.tokenizer.vocabulary_size()} wordpieces kept")
        return Plan(tuple(keep), ffn, heads, cfg.share_layers, kept), measured

    def build(self, run):
        plan, measured = self._plan(run)  # the teacher's seed: one plan whatever --seed
        labelled = len(run.splits.train)
        if self.transfer:  # before reseed: the student's batches mix both
            run.splits.train = transfer.extend(run.splits.train, self.transfer)
            run.log(f"Transfer set: {len(self.transfer)} texts ({self.cfg.transfer_data}), "
                    f"teacher's soft targets only; {labelled} labelled training texts")
        if self.cfg.seed is not None:
            reseed(run, self.cfg.seed)
        student = build_student(self.float32, plan, run.policy)
        if self.cfg.sparsity:
            self.masks = sparsity.prune_by_magnitude(student, self.cfg.sparsity)
        self.record = {
            "teacher": os.path.abspath(self.cfg.teacher), "options": self.cfg.options(),
            "plan": plan.to_json(), "importance": measured,
            "transfer": {"examples": len(self.transfer), "source": self.cfg.transfer_data,
                         "labelled_examples": labelled},
            "parameters": {"teacher": int(self.teacher.count_params()),
                           "student": int(student.count_params()),
                           # tied layers: stored once, applied at every depth of the group
                           "student_depth": len(plan.keep_layers)},
        }
        return student

    def prepare(self, model, run):
        cfg, texts = self.cfg, run.splits.train.texts
        if cfg.distil_weight > 0 or cfg.hidden_weight > 0:
            logits = distil.teacher_logits(self.float32, texts)
            states = (hidden.teacher_states(self.float32, texts,
                                            Plan.from_json(self.record["plan"]).keep_layers)
                      if cfg.hidden_weight > 0 else None)
            distil.attach(model, texts, logits, cfg.temperature, cfg.distil_weight, states,
                          cfg.hidden_weight, unlabelled=self.transfer)
        self._float32 = None  # the teacher is not needed while the student trains
        return [sparsity.HoldSparsity(self.masks)] if self.masks else []


def compress(cfg, verbose=1):
    """Compresses the teacher run `cfg.teacher` into the run directory `cfg.out`.

    Args:
        cfg: `CompressConfig`.
        verbose: 0 or 1.

    Returns:
        `tfmp.train.RunResult` of the student's run; its config.json has a `compress`
        section (teacher, options, plan, importance, transfer set size, parameters).
    """
    cfg.validate()
    config = teacher_config(cfg)
    config.validate()
    rundir.check_target(config.out, "a run directory", "--out",
                        (cfg.teacher, config.data, config.model), rundir.looks_like_run,
                        config.overwrite)
    teacher = models.load_model(cfg.teacher)
    family = families.by_backbone(teacher.backbone)
    if family.compress_refusal:
        raise UserError(f"'{cfg.teacher}' fine-tuned a {family.model_type} checkpoint: "
                        f"{family.compress_refusal}")
    cfg.check_against(len(depth_layers(teacher.backbone)), teacher.backbone.num_heads)
    texts = (transfer.choose(config, data.prepare_data(config)[2], cfg.transfer_examples,
                             cfg.transfer_data) if cfg.transfer_examples else [])
    return train(config, verbose=verbose, source=_Source(cfg, teacher, texts))
