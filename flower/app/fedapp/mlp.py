"""An MLP in NumPy and MNIST's IDX files: the model our Flower clients train.

Keras' weight layout (each dense layer a kernel `(inputs, units)` then a bias
`(units,)`), ReLU hidden layers, softmax output, SGD with momentum; shared by
`flower/numpy_client.py` (the original protocol) and this app's ClientApp
(the current one).
"""

import gzip
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip), MNIST's format: a magic, the dimensions, then u8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data: Path, split: str, take: slice, seed: int):
    """Images scaled to [0, 1] as rows of 784, and labels, of a seeded shuffle's `take`."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(data / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data / f"{prefix}-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(labels))[take]
    x = images[order].reshape(len(order), -1).astype(np.float32) / 255.0
    return x, labels[order].astype(np.int64)


class Mlp:
    """Dense layers, ReLU between them, softmax at the end; SGD with momentum."""

    def __init__(self, sizes, seed):
        rng = np.random.default_rng(seed)
        self.weights = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            limit = np.sqrt(6.0 / (fan_in + fan_out))  # Keras' glorot_uniform
            self.weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
            self.weights.append(np.zeros(fan_out, dtype=np.float32))
        self.velocity = [np.zeros_like(w) for w in self.weights]

    def set(self, weights):
        if [w.shape for w in weights] != [w.shape for w in self.weights]:
            raise ValueError(
                f"the server's tensors have shapes {[w.shape for w in weights]}, "
                f"this model's are {[w.shape for w in self.weights]}"
            )
        self.weights = [np.asarray(w, dtype=np.float32).copy() for w in weights]

    def forward(self, x):
        """Every layer's output; the last is the softmax."""
        outs = [x]
        layers = len(self.weights) // 2
        for i in range(layers):
            z = outs[-1] @ self.weights[2 * i] + self.weights[2 * i + 1]
            if i < layers - 1:
                outs.append(np.maximum(z, 0.0))
            else:
                z = z - z.max(axis=1, keepdims=True)
                e = np.exp(z)
                outs.append(e / e.sum(axis=1, keepdims=True))
        return outs

    def train_epoch(self, x, y, lr, momentum, batch, rng):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            outs = self.forward(x[idx])
            delta = outs[-1].copy()
            delta[np.arange(len(idx)), y[idx]] -= 1.0
            delta /= len(idx)
            for i in reversed(range(len(self.weights) // 2)):
                grads = (outs[i].T @ delta, delta.sum(axis=0))
                if i > 0:
                    delta = (delta @ self.weights[2 * i].T) * (outs[i] > 0)
                for j, g in zip((2 * i, 2 * i + 1), grads):
                    self.velocity[j] = momentum * self.velocity[j] - lr * g
                    self.weights[j] += self.velocity[j]

    def evaluate(self, x, y):
        p = self.forward(x)[-1]
        loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-7)).mean())
        return loss, float((p.argmax(axis=1) == y).mean())
