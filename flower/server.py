"""A Flower server of the original protocol, as the reference lab runs it.

`flwr.server.start_server` with FedAvg over every client each round and the
example-weighted mean of the clients' `accuracy`; it asks one client for the
initial parameters (no `initial_parameters`). Writes what each client reported
each round, beside Flower's own aggregates, to a JSON file, so a test can
recompute the averages and check who took part.

    python flower/server.py --address 127.0.0.1:8080 --rounds 3 --clients 2 --out history.json
"""

import argparse
import json
import sys


def weighted(metrics):
    """Flower's usual metrics aggregation: each key's example-weighted mean."""
    total = sum(n for n, _ in metrics)
    keys = set().union(*(m.keys() for _, m in metrics)) if metrics else set()
    return {k: sum(n * float(m[k]) for n, m in metrics if k in m) / total for k in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="clients every round needs")
    parser.add_argument("--out", required=True, help="JSON file for the record")
    args = parser.parse_args()

    import flwr as fl

    class Recording(fl.server.strategy.FedAvg):
        """FedAvg that keeps every client's report."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rounds = {}

        def record(self, server_round):
            return self.rounds.setdefault(server_round, {"round": server_round})

        def aggregate_fit(self, server_round, results, failures):
            self.record(server_round)["fit"] = [
                {"client": proxy.cid, "examples": res.num_examples, "metrics": dict(res.metrics)}
                for proxy, res in results
            ]
            self.record(server_round)["fit_failures"] = len(failures)
            return super().aggregate_fit(server_round, results, failures)

        def aggregate_evaluate(self, server_round, results, failures):
            loss, metrics = super().aggregate_evaluate(server_round, results, failures)
            record = self.record(server_round)
            record["evaluate"] = [
                {
                    "client": proxy.cid,
                    "examples": res.num_examples,
                    "loss": res.loss,
                    "accuracy": res.metrics.get("accuracy"),
                }
                for proxy, res in results
            ]
            record["evaluate_failures"] = len(failures)
            record["loss"] = loss
            record["accuracy"] = metrics.get("accuracy")
            return loss, metrics

    n = args.clients
    strategy = Recording(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=n,
        min_evaluate_clients=n,
        min_available_clients=n,
        fit_metrics_aggregation_fn=weighted,
        evaluate_metrics_aggregation_fn=weighted,
    )
    fl.server.start_server(
        server_address=args.address,
        config=fl.server.ServerConfig(num_rounds=args.rounds, round_timeout=120),
        strategy=strategy,
    )
    with open(args.out, "w") as f:
        json.dump({"rounds": [strategy.rounds[r] for r in sorted(strategy.rounds)]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
