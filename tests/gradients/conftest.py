"""Fixtures of the gradient-stage tests."""

from pathlib import Path

import pytest
from gradient_models import tiny_bert, tiny_llama, tiny_mlp
from torch import nn

_HERE = Path(__file__).parent
_QUIET = (
    # peft calls a transformers property that transformers 5 deprecates.
    "ignore:.*is_gradient_checkpointing:FutureWarning",
    # vmap falls back to a loop for CPU attention kernels: slower, still exact.
    "ignore:There is a performance drop:UserWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            for pattern in _QUIET:
                item.add_marker(pytest.mark.filterwarnings(pattern))


@pytest.fixture
def bert() -> nn.Module:
    return tiny_bert()


@pytest.fixture
def llama() -> nn.Module:
    return tiny_llama()


@pytest.fixture
def mlp() -> nn.Module:
    return tiny_mlp()
