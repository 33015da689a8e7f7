import logging

import pytest
from torch import nn

from hyperinf.gradients import Block, find_blocks

BERT_PREFIX = "base_model.model.bert.encoder.layer"


def test_bert_lora_blocks(bert):
    blocks = find_blocks(bert)

    assert len(blocks) == 2 * 2 * 2 + 1
    first = blocks[0]
    assert first == Block(
        name=f"{BERT_PREFIX}.0.attention.self.query.lora_A.default.weight",
        module_name=f"{BERT_PREFIX}.0.attention.self.query.lora_A.default",
        kind="lora_A",
        r=4,
        d=32,
        transposed=False,
    )
    b_block = blocks[1]
    assert b_block.name == f"{BERT_PREFIX}.0.attention.self.query.lora_B.default.weight"
    assert (b_block.kind, b_block.r, b_block.d, b_block.transposed) == ("lora_B", 4, 32, True)
    head = blocks[-1]
    assert head.name == "base_model.model.classifier.modules_to_save.default.weight"
    assert (head.kind, head.r, head.d, head.transposed) == ("dense", 3, 32, False)
    assert sorted({b.kind for b in blocks}) == ["dense", "lora_A", "lora_B"]


def test_llama_lora_blocks_have_lora_shapes(llama):
    blocks = {b.name.split("layers.")[1]: b for b in find_blocks(llama)}

    assert len(blocks) == 2 * 2 * 2
    v_b = blocks["0.self_attn.v_proj.lora_B.default.weight"]
    assert (v_b.r, v_b.d, v_b.transposed) == (4, 16, True)
    v_a = blocks["0.self_attn.v_proj.lora_A.default.weight"]
    assert (v_a.r, v_a.d, v_a.transposed) == (4, 32, False)
    q_b = blocks["1.self_attn.q_proj.lora_B.default.weight"]
    assert (q_b.r, q_b.d) == (4, 32)


def test_mlp_dense_blocks_and_skipped_biases_logged(mlp, caplog):
    with caplog.at_level(logging.INFO, logger="hyperinf.gradients.blocks"):
        blocks = find_blocks(mlp)

    assert [(b.name, b.module_name, b.kind, b.r, b.d) for b in blocks] == [
        ("0.weight", "0", "dense", 7, 5),
        ("2.weight", "2", "dense", 3, 7),
    ]
    assert "0.bias" in caplog.text and "2.bias" in caplog.text


def test_frozen_linear_is_not_a_block(mlp):
    mlp[0].weight.requires_grad_(False)

    assert [b.name for b in find_blocks(mlp)] == ["2.weight"]


def test_include_and_exclude_patterns(bert):
    only_b = find_blocks(bert, include=["lora_B"])
    assert len(only_b) == 4 and all(b.kind == "lora_B" for b in only_b)

    layer0 = find_blocks(bert, include=["*layer.0.*"])
    assert len(layer0) == 4 and all(".layer.0." in b.name for b in layer0)

    no_head = find_blocks(bert, exclude=["classifier"])
    assert len(no_head) == 8 and all(b.kind != "dense" for b in no_head)

    value_a = find_blocks(bert, include=["*value.lora_A*"], exclude=["layer.1"])
    expected = f"{BERT_PREFIX}.0.attention.self.value.lora_A.default.weight"
    assert [b.name for b in value_a] == [expected]


def test_pattern_matching_nothing_lists_available_blocks(bert):
    with pytest.raises(ValueError, match="'key'.*matches no block.*query.lora_A"):
        find_blocks(bert, include=["key"])
    with pytest.raises(ValueError, match=r"exclude pattern '\*dense\*'"):
        find_blocks(bert, exclude=["*dense*"])


def test_patterns_leaving_nothing_raise(mlp):
    with pytest.raises(ValueError, match="leave no block"):
        find_blocks(mlp, exclude=["weight"])


def test_model_without_trainable_blocks_raises(mlp):
    mlp.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable blocks.*Frozen weights are not blocks"):
        find_blocks(mlp)

    only_embedding = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no trainable blocks"):
        find_blocks(only_embedding)
