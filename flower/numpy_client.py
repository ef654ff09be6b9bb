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
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "app"))
from fedapp.mlp import Mlp, load  # noqa: E402


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
    parser.add_argument("--root-certificates", type=Path, help="PEM CA of a server that serves TLS")
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

    roots = args.root_certificates.read_bytes() if args.root_certificates else None
    fl.client.start_numpy_client(server_address=args.server, client=Client(), root_certificates=roots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
