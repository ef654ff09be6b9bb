"""The ServerApp: FedAvg over every node for `num-server-rounds` rounds, from
an MLP initialised here, weighting by `num-examples`, as Flower's own apps do.

It prints, as its last line, `record: <JSON>`: per round, what each node
reported of its training and evaluation and Flower's weighted mean, so a test
can recompute the averages and count who took part.
"""

import json

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedapp.mlp import Mlp

app = ServerApp()


class Recording(FedAvg):
    """FedAvg that keeps every reply's metrics."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds = {}

    def _keep(self, server_round, phase, replies):
        replies = list(replies)
        kept = []
        for msg in replies:
            if msg.has_content():
                m = msg.content["metrics"]
                kept.append({k: float(m[k]) for k in ("num-examples", "loss", "accuracy") if k in m})
            else:
                kept.append({"error": msg.error.reason})
        self.rounds.setdefault(server_round, {"round": server_round})[phase] = kept
        return replies

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, self._keep(server_round, "train", replies))

    def aggregate_evaluate(self, server_round, replies):
        metrics = super().aggregate_evaluate(server_round, self._keep(server_round, "evaluate", replies))
        if metrics is not None:
            self.rounds[server_round]["accuracy"] = float(metrics["accuracy"])
        return metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    sizes = [int(s) for s in str(context.run_config["model"]).removeprefix("mlp:").split("-")]
    strategy = Recording(fraction_train=1.0, fraction_evaluate=1.0)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Mlp(sizes, 0).weights),
        train_config=ConfigRecord({}),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    print("record: " + json.dumps([strategy.rounds[r] for r in sorted(strategy.rounds)]), flush=True)
