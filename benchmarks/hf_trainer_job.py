"""One Hugging Face Trainer fine-tuning run: the job a user would otherwise run instead of tfmp.

    python benchmarks/hf_trainer_job.py SPLIT_JSON MODEL_DIR RESULT_JSON --precision bf16

Reads the training, validation and test split that `endtoend.py` wrote from tfmp's own
split (so both engines see the same tweets), fine-tunes with `transformers.Trainer` the
way its documentation suggests for this job, and writes `train_runtime` (what the
Trainer reports: the training loop including its per-epoch evaluation), the process's
wall time, test accuracy and macro-F1 to RESULT_JSON.

Settings (stated in the README next to the figures): AutoModelForSequenceClassification
from the same checkpoint, batch 32 (train and eval), 2 epochs, AdamW lr 5e-5, weight decay
0.01, linear schedule with 10% warmup (`warmup_steps=0.1`; tfmp's defaults), `train_sampling_strategy=
"group_by_length"` with dynamic padding (DataCollatorWithPadding) and truncation to 64
tokens, `eval_strategy="epoch"`, `save_strategy="no"`, `use_cpu=True`, no logging
integrations; `--precision bf16` sets `bf16=True` (autocast), fp32 nothing. PyTorch uses
its default threads (both cores).

Imports torch and transformers only: no TensorFlow in this process.
"""

import argparse
import json
import time

STARTED = time.perf_counter()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("split")
    parser.add_argument("model_dir")
    parser.add_argument("result")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, Trainer, TrainingArguments)

    with open(args.split, encoding="utf-8") as f:
        split = json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    def encode(part):
        enc = tokenizer(split[part]["texts"], truncation=True, max_length=args.max_length)
        return [{"input_ids": ids, "attention_mask": mask, "labels": label}
                for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"],
                                            split[part]["labels"])]

    train, validation, test = encode("train"), encode("validation"), encode("test")
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=split["num_classes"])

    def accuracy(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float(np.mean(np.argmax(logits, -1) == labels))}

    training_args = TrainingArguments(
        output_dir=args.result + ".trainer", per_device_train_batch_size=32,
        per_device_eval_batch_size=32, num_train_epochs=args.epochs, learning_rate=5e-5,
        weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length", eval_strategy="epoch",
        save_strategy="no", logging_strategy="no", report_to="none", use_cpu=True,
        bf16=args.precision == "bf16", seed=args.seed, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      eval_dataset=validation, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=accuracy)
    fit = trainer.train()
    clock = time.perf_counter()
    predictions = trainer.predict(test)
    test_seconds = time.perf_counter() - clock
    predicted = np.argmax(predictions.predictions, -1)
    # The labels that came back with the predictions, not the split's order: the
    # Trainer may batch the test set in another order (its length grouping).
    labels = np.asarray(predictions.label_ids)
    assert sorted(labels.tolist()) == sorted(split["test"]["labels"])
    result = {
        "engine": "hf_trainer", "precision": args.precision, "seed": args.seed,
        "train_runtime": fit.metrics["train_runtime"],
        "test_seconds": test_seconds,
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
        "torch_threads": torch.get_num_threads(),
        "process_seconds": time.perf_counter() - STARTED,
    }
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
