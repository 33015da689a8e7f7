"""An on-disk cache of per-example block gradients, in safetensors shards.

One shard per batch, named by the dataset index of its first example, holding every block's
gradients ``(b, r, d)``, the per-example losses ``(b,)`` and, in its metadata, the block
layout. A shard is written to a temporary name and renamed, so a shard that exists is
complete: an interrupted pass resumes from the shards already on disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

logger = logging.getLogger(__name__)

FORMAT = "hyperinf-gradient-cache/1"
_LOSSES = "__losses__"


class GradientCache:
    """A folder of gradient shards for one model, block layout and training set.

    Args:
        folder: Where the shards live; created if missing.
        layout: Per block name, its ``(r, d)``. A folder written with another layout is
            refused rather than mixed.
    """

    def __init__(self, folder: str | Path, layout: Mapping[str, tuple[int, int]]) -> None:
        self.folder = Path(folder)
        self.layout = {name: tuple(shape) for name, shape in layout.items()}
        self._layout_json = json.dumps({k: list(v) for k, v in self.layout.items()})
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_layout()

    def _layout_path(self) -> Path:
        return self.folder / "layout.json"

    def _check_layout(self) -> None:
        path = self._layout_path()
        record = {"format": FORMAT, "blocks": {k: list(v) for k, v in self.layout.items()}}
        if not path.exists():
            path.write_text(json.dumps(record, indent=2))
            return
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a gradient cache layout ({error})") from error
        if found != record:
            raise ValueError(
                f"{path}: the cache in {self.folder} was written for other blocks or another "
                "format; use a new cache folder"
            )

    def _shard(self, offset: int) -> Path:
        return self.folder / f"grads-{offset:09d}.safetensors"

    def has(self, offset: int) -> bool:
        """Whether the shard of the batch starting at ``offset`` is on disk."""
        return self._shard(offset).exists()

    def write(self, offset: int, grads: Mapping[str, Tensor], losses: Tensor) -> None:
        """Write one batch's gradients ``(b, r, d)`` per block and losses ``(b,)``."""
        tensors = {name: grads[name].detach().contiguous().cpu() for name in self.layout}
        tensors[_LOSSES] = losses.detach().contiguous().cpu()
        path = self._shard(offset)
        temporary = path.with_suffix(".tmp")
        metadata = {"format": FORMAT, "offset": str(offset), "blocks": self._layout_json}
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)

    def read(self, offset: int, device: str | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Read the shard of the batch starting at ``offset``."""
        path = self._shard(offset)
        with safe_open(str(path), framework="pt", device=device or "cpu") as shard:
            metadata = shard.metadata() or {}
            if metadata.get("format") != FORMAT or metadata.get("blocks") != self._layout_json:
                raise ValueError(f"{path}: not a {FORMAT} shard of these blocks")
            grads = {name: shard.get_tensor(name) for name in self.layout}
            losses = shard.get_tensor(_LOSSES)
        return grads, losses

    def offsets(self) -> Sequence[int]:
        """Offsets of the shards on disk, in order."""
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("grads-*.safetensors"))
