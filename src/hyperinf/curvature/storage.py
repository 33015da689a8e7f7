"""The on-disk format of a curvature file: one safetensors file.

Tensors are stored as they are; the header (block names, shapes, kinds, n, dtype) is stored
in the safetensors metadata, one JSON-encoded string per field, beside the format name and
version. What the tensors mean is up to `CurvatureSet`; this module only guarantees that a
file is a curvature file of a known version.
"""

import json
import logging
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from hyperinf.curvature.errors import CurvatureFileError

logger = logging.getLogger(__name__)

FORMAT_NAME = "hyperinf.curvature"
FORMAT_VERSION = 1
_FORMAT_KEY = "format"
_VERSION_KEY = "format_version"


def save_state(path: str | os.PathLike, tensors: dict[str, Tensor], header: dict) -> None:
    """Writes tensors and a JSON-serialisable header to one safetensors file.

    The file is written beside its destination and renamed, so an interrupted save never
    leaves a truncated curvature file behind.

    Args:
        path: Destination file.
        tensors: Tensors by key; moved to the CPU and made contiguous.
        header: Fields of the header; each value must be JSON-serialisable.
    """
    path = Path(path)
    metadata = {key: json.dumps(value) for key, value in header.items()}
    metadata[_FORMAT_KEY] = FORMAT_NAME
    metadata[_VERSION_KEY] = str(FORMAT_VERSION)
    cpu_tensors = {key: t.detach().cpu().contiguous() for key, t in tensors.items()}

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu_tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.debug("wrote curvature file %s (%d tensors)", path, len(cpu_tensors))


def load_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Reads a file written by `save_state`.

    Args:
        path: A curvature file.

    Returns:
        The tensors (on the CPU) and the decoded header (format fields removed).

    Raises:
        FileNotFoundError: If `path` does not exist.
        CurvatureFileError: If `path` is not a safetensors file, not a curvature file, of an
            unknown format version, or its header is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"curvature file {path} does not exist")
    try:
        tensors = load_file(path)
        metadata = _read_metadata(path)
    except SafetensorError as exc:
        raise CurvatureFileError(f"{path} is not a safetensors file: {exc}") from exc

    if metadata.get(_FORMAT_KEY) != FORMAT_NAME:
        raise CurvatureFileError(
            f"{path} is not a curvature file (its metadata has no format {FORMAT_NAME!r})"
        )
    version = metadata.get(_VERSION_KEY)
    if version != str(FORMAT_VERSION):
        raise CurvatureFileError(
            f"{path} has unknown curvature format version {version!r}; "
            f"this hyperinf reads version {FORMAT_VERSION}"
        )

    header = {}
    for key, text in metadata.items():
        if key in (_FORMAT_KEY, _VERSION_KEY):
            continue
        try:
            header[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CurvatureFileError(f"{path}: header field {key!r} is not JSON") from exc
    return tensors, header


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as handle:
        return handle.metadata() or {}
