"""The MLP of feature tables, its dataset and its trainer (hyperinf.tasks.models)."""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from hyperinf.tasks.data import examples_from_frame, load_builtin
from hyperinf.tasks.finetune import evaluate_accuracy, predict
from hyperinf.tasks.models import FeatureDataset, MLPClassifier, features_dataset, train_mlp


@pytest.fixture(scope="module")
def digits():
    return load_builtin("digits")


def test_mlp_forward_is_standardise_then_linear_relu_linear():
    torch.manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.5])
    std = torch.tensor([2.0, 0.0, 4.0])  # a constant feature: its std becomes 1
    model = MLPClassifier(3, 4, hidden=(5,), mean=mean, std=std)
    x = torch.randn(6, 3)

    first, second = model.layers[0], model.layers[2]
    z = (x - mean) / torch.tensor([2.0, 1.0, 4.0])
    expected = torch.relu(z @ first.weight.T + first.bias) @ second.weight.T + second.bias
    torch.testing.assert_close(model(x), expected)

    # Only the Linear layers are trainable; the standardisation is stored as buffers.
    assert [name for name, _ in model.named_parameters()] == [
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"
    ]
    assert set(model.state_dict()) >= {"mean", "std"}


def test_mlp_without_hidden_layers_is_linear():
    model = MLPClassifier(2, 3, hidden=())
    assert len(model.layers) == 1 and isinstance(model.layers[0], torch.nn.Linear)
    with pytest.raises(ValueError, match="mean and std must have shape"):
        MLPClassifier(2, 3, mean=np.zeros(3))


def test_features_dataset_items():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4], "label": ["x", "y"]})
    examples = examples_from_frame(frame, source="mem", fmt="csv")
    dataset = features_dataset(examples)
    x, y = dataset[1]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, torch.tensor([2.0, 4.0]))
    assert int(y) == 1

    noisy = features_dataset(examples, labels=np.array([1, 1]))
    assert int(noisy[0][1]) == 1
    with pytest.raises(ValueError, match="features must be"):
        FeatureDataset(np.zeros((2, 2)), np.zeros(3))


def test_train_mlp_on_digits_is_accurate_and_deterministic(digits):
    train, val = digits
    start = time.perf_counter()
    model = train_mlp(train.features, train.labels, seed=0)
    seconds = time.perf_counter() - start

    assert not model.training
    accuracy = evaluate_accuracy(model, features_dataset(val))
    assert accuracy >= 0.9, f"val accuracy {accuracy:.3f} after {seconds:.1f} s"

    state = torch.random.get_rng_state()
    again = train_mlp(train.features, train.labels, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other = train_mlp(train.features, train.labels, seed=1, epochs=1)
    assert not torch.equal(other.layers[0].weight, model.layers[0].weight)


def test_train_mlp_keeps_num_classes_when_labels_lack_a_class(digits):
    train, _ = digits
    keep = train.labels < 9
    model = train_mlp(train.features[keep], train.labels[keep], num_classes=10, epochs=1)
    assert model.layers[-1].out_features == 10


def test_predict_matches_explicit_cross_entropy(digits):
    train, _ = digits
    model = train_mlp(train.features[:200], train.labels[:200], epochs=2, num_classes=10)
    labels = (train.labels[:50] + 1) % 10
    dataset = features_dataset(train.subset(range(50)), labels=labels)
    predicted, loss = predict(model, dataset, batch_size=7)

    with torch.no_grad():
        logits = model(torch.as_tensor(train.features[:50])).double()
    for i in range(50):
        row = logits[i]
        expected = float(torch.log(torch.exp(row).sum()) - row[labels[i]])
        assert loss[i] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert predicted[i] == int(row.argmax())
    assert evaluate_accuracy(model, dataset) == pytest.approx(np.mean(predicted == labels))
