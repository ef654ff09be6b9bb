"""Writes wine.csv: scikit-learn's bundled wine data (178 wines, 13 chemical
measurements, 3 cultivars), standardised column by column so that one
learning rate suits every feature. Nothing is downloaded: the data ships
inside the scikit-learn wheel.

    python -m venv /tmp/sk && /tmp/sk/bin/pip install scikit-learn
    /tmp/sk/bin/python examples/wine-csv/make_csv.py
"""

import os

from sklearn.datasets import load_wine

wine = load_wine()
x = (wine.data - wine.data.mean(axis=0)) / wine.data.std(axis=0)
names = [n.replace("/", "_") for n in wine.feature_names]
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wine.csv")
with open(path, "w") as f:
    f.write(",".join(names + ["cultivar"]) + "\n")
    for row, label in zip(x, wine.target):
        f.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")
print(f"wrote {path}: {len(x)} rows")
