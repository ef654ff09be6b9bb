#!/usr/bin/env python3
"""Regenerate the Keras model-JSON fixtures in this folder.

Run it under a Keras 2 venv (tensorflow-cpu 2.12) and under a Keras 3 venv
(keras 3 + jax[cpu]); see README.md. Each run writes, beside this script,

    <name>.keras<MAJOR>.json          model.to_json(), re-indented with indent=1
    <name>.keras<MAJOR>.weights.npz   model.get_weights() as arr_0, arr_1, ...
                                      (reference_cnn and mlp only)

where MAJOR is the major version of keras.__version__.
"""

import importlib.util
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras 3 without TensorFlow installed: use the JAX backend. (Keras 2 only
# knows the TensorFlow backend, so leave its environment alone.)
if importlib.util.find_spec("tensorflow") is None:
    os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MAJOR = int(keras.__version__.split(".")[0])
SEED = 1


def seq(name, input_shape, make_layers):
    """A Sequential model whose input is declared the way each Keras wants it.

    `make_layers(kw)` returns the layer list, with `**kw` spread into the first
    layer. Keras 2: kw is `input_shape=...` (on the first layer). Keras 3: kw is
    empty and `keras.Input(shape=...)` is prepended to the list. The layers are
    constructed in list order, so auto-names (conv2d, conv2d_1, ...) follow it.
    """
    if MAJOR >= 3:
        items = [keras.Input(shape=input_shape), *make_layers({})]
    else:
        items = make_layers({"input_shape": input_shape})
    return keras.Sequential(items, name=name)


def reference_cnn():
    return seq(
        "reference_cnn",
        (28, 28, 1),
        lambda kw: [
            layers.Conv2D(
                32, (3, 3), activation="relu", kernel_initializer="he_uniform", **kw
            ),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(100, activation="relu", kernel_initializer="he_uniform"),
            layers.Dense(10, activation="softmax"),
        ],
    )


def fashion_cnn():
    return seq(
        "fashion_cnn",
        (28, 28, 1),
        lambda kw: [
            layers.Conv2D(16, 3, padding="same", activation="relu", **kw),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ],
    )


def all_layers():
    return seq(
        "all_layers",
        (16, 16, 3),
        lambda kw: [
            layers.Conv2D(8, 5, strides=2, padding="same", activation="relu", **kw),
            layers.Conv2D(8, 1),
            layers.Activation("relu"),
            layers.AveragePooling2D(pool_size=2, strides=1),
            layers.MaxPooling2D(pool_size=3, strides=2),
            layers.Conv2D(
                12, 3, kernel_initializer="glorot_uniform", padding="valid"
            ),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(5, activation="linear", kernel_initializer="lecun_uniform"),
        ],
    )


def mlp():
    return seq(
        "mlp",
        (64,),
        lambda kw: [
            layers.Dense(32, activation="relu", **kw),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax"),
        ],
    )


def inputlayer_mlp():
    """An explicit InputLayer as the first item of the layer list."""
    if MAJOR >= 3:
        first = layers.InputLayer(shape=(28, 28, 1))
    else:
        first = layers.InputLayer(input_shape=(28, 28, 1))
    return keras.Sequential(
        [first, layers.Flatten(), layers.Dense(10, activation="softmax")],
        name="inputlayer_mlp",
    )


def deferred_mlp():
    """No input declared at all; the shape comes from model.build() afterwards.

    Keras 2 then writes no InputLayer, only config.build_input_shape.
    """
    model = keras.Sequential(
        [
            layers.Dense(32, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax"),
        ],
        name="deferred_mlp",
    )
    model.build((None, 64))
    return model


# ---- refusal fixtures: things the importer must reject -----------------------


def functional():
    """Functional API, not Sequential: two Dense branches concatenated."""
    inputs = keras.Input(shape=(8,))
    a = layers.Dense(4, activation="relu")(inputs)
    b = layers.Dense(4, activation="relu")(inputs)
    merged = layers.Concatenate()([a, b])
    outputs = layers.Dense(2, activation="softmax")(merged)
    return keras.Model(inputs=inputs, outputs=outputs, name="functional")


def dilated():
    return seq(
        "dilated",
        (28, 28, 1),
        lambda kw: [
            layers.Conv2D(8, 3, dilation_rate=2, activation="relu", **kw),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ],
    )


def regularised():
    return seq(
        "regularised",
        (64,),
        lambda kw: [
            layers.Dense(
                32,
                activation="relu",
                kernel_regularizer=keras.regularizers.l2(0.01),
                **kw,
            ),
            layers.Dense(10, activation="softmax"),
        ],
    )


def batchnorm():
    return seq(
        "batchnorm",
        (28, 28, 1),
        lambda kw: [
            layers.Conv2D(8, 3, activation="relu", **kw),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ],
    )


def sigmoid_hidden():
    return seq(
        "sigmoid_hidden",
        (64,),
        lambda kw: [
            layers.Dense(10, activation="sigmoid", **kw),
            layers.Dense(2, activation="softmax"),
        ],
    )


MODELS = [
    reference_cnn,
    fashion_cnn,
    all_layers,
    mlp,
    inputlayer_mlp,
    deferred_mlp,
    functional,
    dilated,
    regularised,
    batchnorm,
    sigmoid_hidden,
]

# name -> numpy saver: the MLP's weights only (10 KB; the reference CNN's are
# 2 MB of random floats, which the repository does not need to carry).
WEIGHTS = {"mlp": np.savez}


def main():
    print(f"keras {keras.__version__} (writing *.keras{MAJOR}.*)", file=sys.stderr)
    for build in MODELS:
        name = build.__name__
        # Fresh session so auto-generated layer names (dense, dense_1, ...)
        # do not depend on which models were built before; fixed seed so the
        # weights are reproducible for a given Keras version.
        keras.backend.clear_session()
        keras.utils.set_random_seed(SEED)
        model = build()

        text = json.dumps(json.loads(model.to_json()), indent=1) + "\n"
        path = os.path.join(HERE, f"{name}.keras{MAJOR}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {os.path.basename(path)}", file=sys.stderr)

        if name in WEIGHTS:
            weights = model.get_weights()
            wpath = os.path.join(HERE, f"{name}.keras{MAJOR}.weights.npz")
            WEIGHTS[name](wpath, *weights)
            shapes = ", ".join(str(tuple(w.shape)) for w in weights)
            print(f"wrote {os.path.basename(wpath)}: {shapes}", file=sys.stderr)


if __name__ == "__main__":
    main()
