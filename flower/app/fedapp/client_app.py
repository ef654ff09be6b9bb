"""The ClientApp: trains and evaluates the NumPy MLP on this node's MNIST shard.

A node says which shard with `--node-config`: `partition-id`, `num-partitions`,
`data-dir` (MNIST's IDX gzip files), and optionally `examples` and
`test-examples` to take fewer. It reads the model from the message's `arrays`
and answers, as current Flower apps do, with `arrays` and `metrics`
(`num-examples`, `loss`, `accuracy`).
"""

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedapp.mlp import Mlp, load

app = ClientApp()
_cache = {}


def _local(context: Context):
    """This node's model and data, made once per process."""
    key = context.node_id
    if key not in _cache:
        cfg = context.node_config
        partition, partitions = int(cfg["partition-id"]), int(cfg["num-partitions"])
        share = int(cfg.get("examples", 0)) or 60000 // partitions
        test = int(cfg.get("test-examples", 0)) or 10000 // partitions
        data = Path(str(cfg["data-dir"]))
        train = load(data, "train", slice(partition * share, (partition + 1) * share), 0)
        tests = load(data, "test", slice(partition * test, (partition + 1) * test), 0)
        sizes = [int(s) for s in str(context.run_config["model"]).removeprefix("mlp:").split("-")]
        rng = np.random.default_rng(1000 + partition)
        _cache[key] = (Mlp(sizes, partition), train, tests, rng)
    return _cache[key]


@app.train()
def train(msg: Message, context: Context):
    model, (x, y), _, rng = _local(context)
    model.set(msg.content["arrays"].to_numpy_ndarrays())
    model.train_epoch(x, y, lr=0.01, momentum=0.9, batch=32, rng=rng)
    loss, accuracy = model.evaluate(x, y)
    metrics = MetricRecord({"num-examples": len(y), "loss": loss, "accuracy": accuracy})
    content = RecordDict({"arrays": ArrayRecord(model.weights), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    model, _, (x, y), _ = _local(context)
    model.set(msg.content["arrays"].to_numpy_ndarrays())
    loss, accuracy = model.evaluate(x, y)
    metrics = MetricRecord({"num-examples": len(y), "loss": loss, "accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
