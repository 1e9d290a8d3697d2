"""LoRA fine-tuning on a curated dataset: the process `distiller.trainers.local` launches.

    python -m distiller.trainers.lora_training --dataset DIR --run-dir DIR --config JSON

Each example is rendered with the model's chat template (its `tools` passed along), exactly as the model
server renders prompts, and only the assistant turns carry labels: the student learns the teacher's
answers, not to predict the user's questions or the system prompt. Turns are found by rendering the
conversation up to each assistant message (with and without it) and mapping the character span onto
the tokens through the tokenizer's offsets, so it works for any template that renders a conversation's
prefix as a prefix of the whole; a turn for which that fails (templates that rewrite earlier turns) and
turns with OpenAI's `"weight": 0` get no labels.

The loop: seeded shuffle, right padding to the batch's longest example, loss = mean cross-entropy over
the batch's assistant tokens, AdamW, linear warmup then linear decay, gradient clipping, validation loss
before training and after each epoch. The same seed, data, config and thread count give the same
adapter on CPU.

One device only, on purpose: data parallelism over several GPUs (accelerate / torchrun) needs one process
per GPU, status writes from rank 0 and a launcher of its own, while a 135M-1B student trains in minutes on
one GPU. accelerate is therefore not used; vLLM serves the result wherever it was trained.

Progress goes to `run_dir/status.json` (atomically, for pollers) and to a rich progress bar on stderr,
which the launcher sends to `run_dir/train.log`. SIGTERM (from `cancel`) or SIGINT stops it between two
steps with state "cancelled".
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from distiller.trainers.base import dataset_hash, examples_without_metadata
from distiller.trainers.local import ADAPTER_DIR, TRAINING_FILE, LocalLoRAConfig, write_status

IGNORE = -100
FORMAT = "protege-lora/1"

EventSink = Callable[[str, dict[str, Any]], None]


class Cancelled(Exception):
    """Raised by the SIGTERM/SIGINT handler to unwind the training loop."""


@dataclass(frozen=True, slots=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    """`input_ids` on assistant tokens, IGNORE elsewhere (the model shifts nothing: see `_loss_sum`)."""
    truncated: bool = False


# ------------------------------------------------------------------------------------------------- tokenization


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """The message as chat templates expect it: text content (parts joined, None → ""), no `weight`."""
    out = {key: value for key, value in message.items() if key != "weight"}
    content = out.get("content")
    if content is None:
        out["content"] = ""
    elif isinstance(content, list):
        out["content"] = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return out


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trainable assistant turns (each span runs
    from the turn's first character to its end-of-turn marker, trailing whitespace excluded)."""
    rendered = [_template_message(m) for m in messages]

    def render(upto: int, generation_prompt: bool) -> str:
        text = tokenizer.apply_chat_template(rendered[:upto], tools=tools, tokenize=False,
                                             add_generation_prompt=generation_prompt)
        return str(text)

    full = render(len(rendered), False)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0 or index == 0:
            continue
        before, through = render(index, True), render(index + 1, False)
        if through.startswith(before) and full.startswith(through):
            spans.append((len(before), len(through.rstrip())))
    return full, spans


def tokenize_example(tokenizer: Any, example: dict[str, Any], max_length: int) -> Tokenized | None:
    """Token ids and assistant-only labels of one chat example; None when no assistant token is left."""
    text, spans = assistant_spans(tokenizer, example["messages"], example.get("tools") or None)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in encoded["input_ids"]]
    labels = [token if any(start < span_end and end > span_start and end > start for span_start, span_end in spans)
              else IGNORE for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True)]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels[1:]):  # the first token is never predicted
        return None
    return Tokenized(ids, labels, truncated)


def tokenize_split(tokenizer: Any, path: Path, max_length: int) -> tuple[list[Tokenized], dict[str, int]]:
    items, dropped = [], 0
    for example in examples_without_metadata(path):
        item = tokenize_example(tokenizer, example, max_length)
        if item is None:
            dropped += 1
        else:
            items.append(item)
    stats = {"examples": len(items), "without_assistant_tokens": dropped,
             "truncated": sum(item.truncated for item in items),
             "assistant_tokens": sum(sum(label != IGNORE for label in item.labels) for item in items)}
    return items, stats


# ------------------------------------------------------------------------------------------------- batches


def collate(items: Sequence[Tokenized], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and labels."""
    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _batches(items: Sequence[Tokenized], size: int, order: Sequence[int] | None = None) -> Iterator[list[Tokenized]]:
    indices = list(order) if order is not None else list(range(len(items)))
    for start in range(0, len(indices), size):
        yield [items[i] for i in indices[start:start + size]]


def _loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the labelled tokens and their count. Logits are computed only from the
    first position that predicts a label on: long prompts cost no vocabulary-sized logits."""
    labels = batch["labels"]
    labelled = labels != IGNORE
    first = int(labelled.float().argmax(dim=1).min())  # earliest labelled position in the batch
    start = max(first - 1, 0)
    width = labels.shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=width - start).logits
    targets = labels[:, start + 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


def evaluate(model: Any, items: Sequence[Tokenized], batch_size: int, pad_id: int, device: str) -> float | None:
    """Mean cross-entropy per assistant token over `items` (None without items)."""
    if not items:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in _batches(items, batch_size):
            loss, n = _loss_sum(model, collate(chunk, pad_id, device))
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------- training


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` (a FutureWarning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def pick_device(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def _linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))
    return factor


def _load_base(config: LocalLoRAConfig) -> tuple[Any, Any, str, str]:
    """Model, tokenizer, base model name (what the adapter must be served on) and where it was loaded from."""
    from model_server.model_loading import load_default_model, load_model_dir
    from model_server.names import DEFAULT_SERVED_NAME

    if config.base_model is None:
        loaded = load_default_model()
        return loaded.model, loaded.tokenizer, DEFAULT_SERVED_NAME, loaded.source
    path = Path(config.base_model).resolve()
    loaded = load_model_dir(path)
    return loaded.model, loaded.tokenizer, str(path), loaded.source


def train(dataset_dir: Path, run_dir: Path, config: LocalLoRAConfig,
          on_event: EventSink | None = None) -> dict[str, Any]:
    """Train, save `run_dir/adapter` (with training.json) and return the training record.

    `on_event(kind, fields)` is called with kind "start", "step" and "epoch". The caller's torch RNG state
    and thread count are left as they were, so it can also run inside another process (tests, notebooks)."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.threads:
                torch.set_num_threads(config.threads)
            return _train(dataset_dir, run_dir, config, on_event or (lambda kind, fields: None))
    finally:
        torch.set_num_threads(threads)


def _train(dataset_dir: Path, run_dir: Path, config: LocalLoRAConfig, emit: EventSink) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    started = time.monotonic()
    device = pick_device(config.device)
    model, tokenizer, base_model, source = _load_base(config)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    train_items, train_stats = tokenize_split(tokenizer, dataset_dir / "train.jsonl", config.max_length)
    val_items, val_stats = tokenize_split(tokenizer, dataset_dir / "validation.jsonl", config.max_length)
    if not train_items:
        raise ValueError(f"no example in {dataset_dir / 'train.jsonl'} has assistant tokens to train on")

    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    with _quiet_peft():
        peft_model: Any = get_peft_model(model, lora)
    peft_model.to(device)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = math.ceil(total * config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total, warmup))
    generator = torch.Generator().manual_seed(config.seed)

    val_before = evaluate(peft_model, val_items, config.batch_size, pad_id, device)
    emit("start", {"total_steps": total, "epochs": config.epochs, "val_loss": val_before, "device": device})
    train_started = time.monotonic()
    step, epochs = 0, []
    peft_model.train()
    for epoch in range(1, config.epochs + 1):
        loss_total, token_total = 0.0, 0
        order = torch.randperm(len(train_items), generator=generator).tolist()
        for chunk in _batches(train_items, config.batch_size, order):
            loss_sum, count = _loss_sum(peft_model, collate(chunk, pad_id, device))
            loss = loss_sum / max(count, 1)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batch_loss = float(loss_sum.detach())
            loss_total, token_total = loss_total + batch_loss, token_total + count
            elapsed = time.monotonic() - train_started
            emit("step", {"step": step, "total_steps": total, "epoch": epoch, "loss": batch_loss / max(count, 1),
                          "eta_s": round(elapsed / step * (total - step), 2)})
            if step >= total:
                break
        val_loss = evaluate(peft_model, val_items, config.batch_size, pad_id, device)
        epochs.append({"epoch": epoch, "train_loss": loss_total / max(token_total, 1), "val_loss": val_loss})
        emit("epoch", {**epochs[-1], "step": step, "total_steps": total})
        if step >= total:
            break

    train_seconds = time.monotonic() - train_started
    record = {
        "format": FORMAT, "config": config.to_dict(), "dataset_dir": str(dataset_dir),
        "dataset_hash": dataset_hash(dataset_dir), "base_model": base_model, "base_model_source": source,
        "device": device, "threads": torch.get_num_threads(), "steps": step, "epochs": epochs,
        "train_loss": epochs[-1]["train_loss"], "val_loss": epochs[-1]["val_loss"], "val_loss_before": val_before,
        "train_examples": train_stats, "validation_examples": val_stats,
        "trainable_parameters": sum(p.numel() for p in params),
        "train_seconds": round(train_seconds, 3), "steps_per_s": round(step / max(train_seconds, 1e-9), 4),
        "duration_s": round(time.monotonic() - started, 3), "finished_at": time.time(),
        "versions": _versions(),
    }
    _save_adapter(peft_model, run_dir / ADAPTER_DIR, record)
    return record


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _save_adapter(model: Any, adapter_dir: Path, record: dict[str, Any]) -> None:
    """adapter_config.json + adapter_model.safetensors + training.json, written aside and renamed into place:
    an `adapter` folder is always complete. No tokenizer files: the vocabulary is the base model's."""
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_peft():
        model.save_pretrained(str(tmp))
    (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    tmp.rename(adapter_dir)


# ------------------------------------------------------------------------------------------------- process


class _Reporter:
    """Turns training events into status.json rewrites and a rich progress bar."""

    def __init__(self, run_dir: Path, started: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.run_dir, self.started = run_dir, started
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=self.console)
        self.task = self.bar.add_task("training", total=None, loss="-")
        self.fields: dict[str, Any] = {"progress": 0.0}
        self.training = False
        self.cancelled: str | None = None  # the signal that asked to stop, once training runs

    def cancel(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: before training, stop at once; during it, at the next step — an exception raised at
        any bytecode could land in library code that swallows it, and training would go on."""
        if not self.training:
            raise Cancelled(signal.Signals(signum).name)
        self.cancelled = signal.Signals(signum).name

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.training = True
        if self.cancelled is not None:
            raise Cancelled(self.cancelled)
        self.fields.update(fields)
        total = self.fields.get("total_steps") or 1
        self.fields["progress"] = round(self.fields.get("step", 0) / total, 4)
        self.fields["elapsed_s"] = round(time.time() - self.started, 2)
        if kind == "start":
            self.bar.start()
            self.bar.update(self.task, total=total)
            self.console.print(f"training {total} steps on {fields['device']}; validation loss "
                               f"{_fmt(fields['val_loss'])} before training")
        elif kind == "step":
            self.bar.update(self.task, completed=fields["step"], loss=f"{fields['loss']:.4f}")
        else:
            self.console.print(f"epoch {fields['epoch']}: train loss {_fmt(fields['train_loss'])}, "
                               f"validation loss {_fmt(fields['val_loss'])}")
        message = (f"epoch {self.fields.get('epoch', 0)}/{self.fields.get('epochs')}, step {self.fields.get('step', 0)}"
                   f"/{total}, loss {_fmt(self.fields.get('loss'))}")
        write_status(self.run_dir, "running", message=message, **self.fields)  # a small file: every step

    def stop(self) -> None:
        self.bar.stop()


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distiller.trainers.lora_training",
                                     description="LoRA fine-tuning on a curated dataset.")
    parser.add_argument("--dataset", type=Path, required=True, help="a curated dataset folder (train.jsonl, ...)")
    parser.add_argument("--run-dir", type=Path, required=True, help="where status.json and adapter/ go")
    parser.add_argument("--config", default="{}", help="LocalLoRAConfig as JSON")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    reporter = _Reporter(run_dir, started)
    signal.signal(signal.SIGTERM, reporter.cancel)
    signal.signal(signal.SIGINT, reporter.cancel)
    try:
        config = LocalLoRAConfig.from_dict(json.loads(args.config))
        write_status(run_dir, "queued", progress=0.0, message="loading the base model and the dataset")
        record = train(args.dataset.resolve(), run_dir, config, reporter)
    except Cancelled as exc:
        reporter.stop()
        reporter.console.print(f"cancelled ({exc})")
        write_status(run_dir, "cancelled", progress=reporter.fields["progress"], message=f"cancelled ({exc})")
        return 130
    except Exception as exc:
        reporter.stop()
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        write_status(run_dir, "failed", progress=reporter.fields["progress"], message=error, error=error)
        return 1
    reporter.stop()
    result = {"artifact": str(run_dir / ADAPTER_DIR), "model_name": config.model_name or run_dir.name,
              "base_model": record["base_model"],
              "metrics": {key: record[key] for key in ("train_loss", "val_loss", "val_loss_before", "steps",
                                                      "train_seconds", "steps_per_s", "duration_s", "device")}}
    reporter.console.print(f"saved {result['artifact']} in {record['duration_s']:.1f} s")
    write_status(run_dir, "succeeded", progress=1.0, message="adapter saved", result=result,
                 step=record["steps"], total_steps=record["steps"], loss=record["train_loss"],
                 val_loss=record["val_loss"], elapsed_s=round(time.time() - started, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
