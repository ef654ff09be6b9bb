"""The ServerApp: FedAvg over every node for `num-server-rounds` rounds, from
an MLP initialised here, weighting by `num-examples`, as Flower's own apps do."""

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedapp.mlp import Mlp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    sizes = [int(s) for s in str(context.run_config["model"]).removeprefix("mlp:").split("-")]
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Mlp(sizes, 0).weights),
        train_config=ConfigRecord({}),
        num_rounds=int(context.run_config["num-server-rounds"]),
    )
    print("accuracy by round:", result.evaluate_metrics_clientapp)
