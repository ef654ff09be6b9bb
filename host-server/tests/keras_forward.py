"""Scores exported weights the way Keras would, without Keras: a NumPy forward
pass of the Sequential model a Keras JSON describes, with the weights of an
.npz in get_weights() order (as `host-server export` writes them), on IDX test
data. Prints the accuracy as a fraction.

    python keras_forward.py MODEL.json WEIGHTS.npz IMAGES.idx[.gz] LABELS.idx[.gz]

Written for the tests (TensorFlow is too large to install in CI): each layer
is Keras' definition written out in NumPy (channels last, HWIO kernels, `same`
padding with the odd zero after, valid pooling, Flatten over HWC, dropout off
at inference), so agreement with fedcore's evaluation says the layouts match.
"""

import gzip
import json
import sys

import numpy as np


def idx(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def pairs(config, key):
    v = config[key]
    return tuple(v) if isinstance(v, list) else (v, v)


def pad_same(x, k, s):
    n, h, w, c = x.shape
    out_h, out_w = -(-h // s), -(-w // s)
    ph = max((out_h - 1) * s + k - h, 0)
    pw = max((out_w - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def windows(x, k, s):
    """(n, ho, wo, k, k, c) views of x's k x k windows, s apart."""
    n, h, w, c = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    shape = (n, ho, wo, k, k, c)
    st = x.strides
    strides = (st[0], st[1] * s, st[2] * s, st[1], st[2], st[3])
    return np.lib.stride_tricks.as_strided(x, shape, strides)


def activation(x, name, last):
    if name == "relu":
        return np.maximum(x, 0)
    if name in ("linear", None) or (name == "softmax" and last):
        return x  # argmax is unchanged by softmax
    raise SystemExit(f"activation {name} not in this checker")


def forward(model, weights, x):
    layers = [l for l in model["config"]["layers"] if l["class_name"] != "InputLayer"]
    w = iter(weights)
    for i, layer in enumerate(layers):
        kind, cfg = layer["class_name"], layer["config"]
        last = i == len(layers) - 1
        if kind == "Conv2D":
            kernel, bias = next(w), next(w)
            k, s = pairs(cfg, "kernel_size")[0], pairs(cfg, "strides")[0]
            if cfg.get("padding") == "same":
                x = pad_same(x, k, s)
            x = np.einsum("nhwijc,ijco->nhwo", windows(x, k, s), kernel) + bias
            x = activation(x, cfg.get("activation"), last)
        elif kind == "Dense":
            kernel, bias = next(w), next(w)
            x = activation(x @ kernel + bias, cfg.get("activation"), last)
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            k = pairs(cfg, "pool_size")[0]
            s = pairs(cfg, "strides")[0] if cfg.get("strides") else k
            win = windows(x, k, s)
            x = win.max(axis=(3, 4)) if kind == "MaxPooling2D" else win.mean(axis=(3, 4))
        elif kind == "GlobalAveragePooling2D":
            x = x.mean(axis=(1, 2))
        elif kind == "Flatten":
            x = x.reshape(len(x), -1)
        elif kind == "Activation":
            x = activation(x, cfg["activation"], last)
        elif kind == "ReLU":
            x = np.maximum(x, 0)
        elif kind == "Dropout":
            pass
        else:
            raise SystemExit(f"{kind} not in this checker")
    return x


def main():
    model_path, weights_path, images_path, labels_path = sys.argv[1:5]
    with open(model_path) as f:
        model = json.load(f)
    with np.load(weights_path) as f:
        weights = [f[k].astype(np.float64) for k in f.files]
    images = idx(images_path).astype(np.float64) / 255.0
    labels = idx(labels_path)
    x = images.reshape(len(images), images.shape[1], images.shape[2], -1)
    logits = forward(model, weights, x)
    print((logits.argmax(axis=1) == labels).mean())


if __name__ == "__main__":
    main()
