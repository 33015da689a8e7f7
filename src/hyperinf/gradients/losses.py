"""Per-example loss functions.

A loss function is ``loss_fn(model, batch) -> Tensor`` of per-example losses, shape
``(b,)``. Per-example losses are computed from the logits: a Hugging Face model's own
``loss`` output is a batch mean and cannot be split into examples.

Loss functions must run under ``torch.func.vmap`` (the ``"func"`` backend): no
data-dependent Python control flow, so bad data shows up as a NaN loss rather than an
exception, and ``per_example_gradients`` reports it with the example's index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperinf.gradients.batches import Batch, check_batch
from hyperinf.gradients.errors import BatchError

IGNORE_INDEX = -100


def cross_entropy_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Cross-entropy of a classifier, per example.

    Dict batch: ``model(**batch without "labels")``, logits ``(b, C)`` against
    ``batch["labels"]`` ``(b,)``. Tuple batch ``(x, y)``: ``model(x)`` against ``y``.

    Returns:
        Per-example losses ``(b,)``, float32.
    """
    logits, labels = forward_logits(model, batch)
    return cross_entropy_from_logits(logits, labels)


def causal_lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Next-token cross-entropy per example, averaged over the example's target tokens.

    Labels are shifted as Hugging Face does: the logits at position ``t`` predict
    ``labels[:, t + 1]``. Positions whose label is -100 (prompt tokens of instruction data,
    padding) are not targets. An example without any target token has a NaN loss.

    Returns:
        Per-example losses ``(b,)``, float32.
    """
    logits, labels = forward_logits(model, batch)
    return causal_lm_from_logits(logits, labels)


def default_loss(model: nn.Module, batch: Batch) -> Tensor:
    """The loss a model's batch asks for.

    Rule: a dict batch whose model returns 3-D logits ``(b, T, V)`` gets
    :func:`causal_lm_loss`; everything else (2-D logits, tuple batches) gets
    :func:`cross_entropy_loss`. Token classification also has 3-D logits but no label
    shift: pass your own ``loss_fn`` for it.

    Returns:
        Per-example losses ``(b,)``, float32.
    """
    logits, labels = forward_logits(model, batch)
    if isinstance(batch, Mapping) and logits.dim() == 3:
        return causal_lm_from_logits(logits, labels)
    return cross_entropy_from_logits(logits, labels)


def forward_logits(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Run the model on a batch's inputs.

    Returns:
        ``(logits, targets)``: the model's logits and the batch's ``labels`` (dict batch)
        or ``targets`` (tuple batch).
    """
    check_batch(batch, required_keys=("labels",))
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return logits_of(model(**inputs)), batch["labels"]
    inputs, targets = batch
    return logits_of(model(inputs)), targets


def logits_of(output: Any) -> Tensor:
    """The logits of a model output: ``output.logits``, the first element, or the tensor."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise BatchError(f"cannot find logits in a model output of type {type(output).__name__}")


def cross_entropy_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per example of logits ``(b, C)`` against class indices ``(b,)``."""
    if logits.dim() != 2:
        raise BatchError(
            f"cross-entropy needs logits of shape (b, C), got {tuple(logits.shape)}; "
            "for a causal LM use causal_lm_loss"
        )
    if labels.shape != logits.shape[:1]:
        raise BatchError(
            f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}"
        )
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def causal_lm_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy per example of logits ``(b, T, V)``, labels ``(b, T)``."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise BatchError(
            f"causal LM loss needs logits (b, T, V) and labels (b, T), got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    b, length, vocab = logits.shape
    targets = labels[:, 1:].long()
    token_loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(b, length - 1)

    is_target = targets.ne(IGNORE_INDEX)
    return (token_loss * is_target).sum(dim=1) / is_target.sum(dim=1).to(torch.float32)
