"""Blocks: the trainable weight matrices whose per-example gradients we compute.

A block is one ``nn.Linear`` weight that requires grad. Its per-example gradient is
written as a matrix of shape ``(r, d)`` (docs/architecture.md):

- LoRA A weight ``(r, d_in)``: as is, ``d = d_in``;
- LoRA B weight ``(d_out, r)``: transposed to ``(r, d_out)``;
- dense weight ``(out, in)``: as is, ``r = out``, ``d = in``.

LoRA matrices are recognised by peft's module naming: the ``nn.Linear`` children
``<target>.lora_A.<adapter>`` and ``<target>.lora_B.<adapter>`` of a LoRA layer.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)

_LORA_KINDS = ("lora_A", "lora_B")
_NAMES_SHOWN = 8


@dataclass(frozen=True)
class Block:
    """One trainable weight matrix.

    Attributes:
        name: The parameter's name, e.g. ``"...query.lora_A.default.weight"``.
        module_name: Name of the ``nn.Linear`` (sub)module that owns the weight.
        kind: ``"lora_A"``, ``"lora_B"`` or ``"dense"``.
        r: Rows of the ``(r, d)`` block gradient.
        d: Columns of the ``(r, d)`` block gradient.
        transposed: True where the block gradient is the weight gradient transposed (LoRA B).
    """

    name: str
    module_name: str
    kind: str
    r: int
    d: int
    transposed: bool


def find_blocks(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Block]:
    """Find the trainable blocks of a model.

    Args:
        model: Any ``nn.Module``; a PEFT LoRA model, or a plain model with trainable
            ``nn.Linear`` layers.
        include: Patterns of block names to keep (any match keeps a block). ``None`` keeps all.
        exclude: Patterns of block names to drop, applied after ``include``.

    Patterns are ``fnmatch`` globs matched against the parameter name; a pattern without a
    wildcard (``*?[``) matches as a substring.

    Returns:
        The blocks in the model's module order.

    Raises:
        ValueError: The model has no trainable blocks, a pattern matches no block, or the
            patterns leave no block.
    """
    blocks = _all_blocks(model)
    _log_skipped(model, blocks)
    if not blocks:
        raise ValueError(
            "model has no trainable blocks: no nn.Linear weight requires grad. Frozen weights "
            "are not blocks: set requires_grad=True on the layers to study, or train an adapter "
            "(e.g. peft LoRA)."
        )

    if include is not None:
        _check_patterns_match(include, blocks, "include")
        blocks = [b for b in blocks if any(_matches(p, b.name) for p in include)]
    if exclude is not None:
        _check_patterns_match(exclude, blocks, "exclude")
        blocks = [b for b in blocks if not any(_matches(p, b.name) for p in exclude)]
    if not blocks:
        raise ValueError(f"include={include!r} and exclude={exclude!r} leave no block")

    logger.info("found %d blocks", len(blocks))
    return blocks


def _all_blocks(model: nn.Module) -> list[Block]:
    blocks = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            blocks.append(_make_block(module_name, module))
    return blocks


def _make_block(module_name: str, module: nn.Linear) -> Block:
    kind = _kind(module_name)
    out_features, in_features = module.weight.shape
    name = f"{module_name}.weight" if module_name else "weight"
    if kind == "lora_B":
        return Block(name, module_name, kind, r=in_features, d=out_features, transposed=True)
    return Block(name, module_name, kind, r=out_features, d=in_features, transposed=False)


def _kind(module_name: str) -> str:
    parts = module_name.split(".")
    if len(parts) >= 2 and parts[-2] in _LORA_KINDS:
        return parts[-2]
    return "dense"


def _log_skipped(model: nn.Module, blocks: list[Block]) -> None:
    block_names = {b.name for b in blocks}
    skipped = [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and name not in block_names
    ]
    if skipped:
        logger.info(
            "%d trainable parameters are not nn.Linear weights and are not blocks: %s",
            len(skipped),
            ", ".join(skipped),
        )


def _matches(pattern: str, name: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def _check_patterns_match(patterns: Sequence[str], blocks: list[Block], argument: str) -> None:
    if isinstance(patterns, str):
        raise ValueError(f"{argument} must be a sequence of patterns, not the string {patterns!r}")
    for pattern in patterns:
        if not any(_matches(pattern, b.name) for b in blocks):
            shown = ", ".join(b.name for b in blocks[:_NAMES_SHOWN])
            more = f" (and {len(blocks) - _NAMES_SHOWN} more)" if len(blocks) > _NAMES_SHOWN else ""
            raise ValueError(
                f"{argument} pattern {pattern!r} matches no block; available blocks: {shown}{more}"
            )
