"""A Flower client in the reference lab's shape, on NumPy alone.

The reference lab's client is a Keras model behind `flwr.client.NumPyClient`,
started with `start_numpy_client`: `fit` sets the global weights, trains one
epoch (SGD, learning rate 0.01, momentum 0.9, batch 32; one compiled model for
the whole run, so its momentum carries over between rounds) and returns
`get_weights(), len(x_train), {}`; `evaluate` returns `loss, len(x_test),
{"accuracy": accuracy}`. This is that client with the Keras model replaced by
an MLP in NumPy (ReLU hidden layers, softmax output, Keras' weight layout:
each dense layer a kernel `(inputs, units)` then a bias `(units,)`), so tests
and users can run a Flower client without TensorFlow.

    python flower/numpy_client.py --server 127.0.0.1:8080 --model mlp:784-32-10 \
        --data data/mnist --partition 0 --partitions 5
"""

import argparse
import gzip
import sys
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of the Flower (or our) server")
    parser.add_argument("--model", default="mlp:784-32-10", help="mlp:784-...-10")
    parser.add_argument("--data", type=Path, default=Path("data/mnist"))
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=5)
    parser.add_argument("--examples", type=int, default=0, help="training examples (0: an equal share)")
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    spec = args.model.removeprefix("mlp:")
    sizes = [int(s) for s in spec.split("-")]
    share = args.examples or 60000 // args.partitions
    begin = args.partition * share
    x_train, y_train = load(args.data, "train", slice(begin, begin + share), args.seed)
    test = args.test_examples
    x_test, y_test = load(args.data, "test", slice(args.partition * test, (args.partition + 1) * test), args.seed)
    model = Mlp(sizes, args.seed + args.partition)
    rng = np.random.default_rng(args.seed + 1000 + args.partition)

    import flwr as fl

    class Client(fl.client.NumPyClient):
        def get_parameters(self, config):
            return model.weights

        def fit(self, parameters, config):
            model.set(parameters)
            model.train_epoch(x_train, y_train, lr=0.01, momentum=0.9, batch=32, rng=rng)
            return model.weights, len(y_train), {}

        def evaluate(self, parameters, config):
            model.set(parameters)
            loss, accuracy = model.evaluate(x_test, y_test)
            print(f"round {config.get('server_round', '?')}: accuracy {accuracy:.4f}", flush=True)
            return loss, len(y_test), {"accuracy": accuracy}

    fl.client.start_numpy_client(server_address=args.server, client=Client())
    return 0


if __name__ == "__main__":
    sys.exit(main())
