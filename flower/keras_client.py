"""The reference lab's Flower client, unchanged in shape: a Keras CNN behind
`NumPyClient`, started with `start_numpy_client` (flwr 1.3, TensorFlow 2.12).

Conv2D(32, 3x3, ReLU, he_uniform) -> MaxPooling2D(2x2) -> Flatten ->
Dense(100, ReLU, he_uniform) -> Dense(10, softmax); SGD(0.01, momentum 0.9),
categorical cross-entropy; one epoch of batch 32 per fit; one compiled model
for the whole run. The lab loads MNIST with `keras.datasets.mnist` (a
download); here the same images come from this repository's IDX files, shard
`--partition` of `--partitions`. Used by bench/flower_reference.sh.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "app"))
from fedapp.mlp import load  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--data", type=Path, default=Path("data/mnist"))
    parser.add_argument("--partition", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=5)
    args = parser.parse_args()

    import flwr as fl
    from tensorflow import keras

    share, test = 60000 // args.partitions, 10000 // args.partitions
    p = args.partition
    x_train, y_train = load(args.data, "train", slice(p * share, (p + 1) * share), 0)
    x_test, y_test = load(args.data, "test", slice(p * test, (p + 1) * test), 0)
    x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)
    y_train, y_test = keras.utils.to_categorical(y_train, 10), keras.utils.to_categorical(y_test, 10)

    model = keras.Sequential(
        [
            keras.layers.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform", input_shape=(28, 28, 1)),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu", kernel_initializer="he_uniform"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    opt = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    model.compile(optimizer=opt, loss="categorical_crossentropy", metrics=["accuracy"])

    class Client(fl.client.NumPyClient):
        def get_parameters(self, config):
            return model.get_weights()

        def fit(self, parameters, config):
            model.set_weights(parameters)
            model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
            return model.get_weights(), len(x_train), {}

        def evaluate(self, parameters, config):
            model.set_weights(parameters)
            loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
            print(f"round {config.get('server_round', '?')}: accuracy {accuracy:.4f}", flush=True)
            return loss, len(x_test), {"accuracy": accuracy}

    fl.client.start_numpy_client(server_address=args.server, client=Client())
    return 0


if __name__ == "__main__":
    sys.exit(main())
