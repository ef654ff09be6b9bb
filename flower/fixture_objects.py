"""Writes a Fleet API message as Flower itself deflates it, for flower-bridge's tests.

A `train` message for mlp:3-2-2 (the global model: the values 0, 0.5, 1, ...
in Keras' tensor order) with `config` {"server-round": 3}, and a reply with
its arrays plus 1.0 and `metrics` {"num-examples": 40, "accuracy": 0.75,
"loss": 0.5}: every object's content by id, each message's object tree, and
the Message protos. Regenerate with the Flower venv:

    $(flower/venv.sh) flower/fixture_objects.py > flower-bridge/tests/fixtures/fleet_objects.json
"""

import json

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.task_identity import TaskIdentity
from google.protobuf.json_format import MessageToDict

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 1, 1

shapes = [(3, 2), (2,), (2, 2), (2,)]
values, start = [], 0.0
for shape in shapes:
    n = int(np.prod(shape))
    values.append((np.arange(n, dtype=np.float32) * 0.5 + start).reshape(shape))
    start += n * 0.5


def dump(message):
    objects = get_all_nested_objects(message)
    tree = get_object_tree(message)
    return {
        "message_id": message.object_id,
        "objects": {oid: obj.deflate().hex() for oid, obj in objects.items()},
        "tree": MessageToDict(tree),
        "proto": message_to_proto(message).SerializeToString().hex(),
    }


ins = Message(
    RecordDict({"arrays": ArrayRecord(values), "config": ConfigRecord({"server-round": 3})}),
    dst_node_id=7,
    message_type="train",
    group_id="3",
)
# The SuperLink names an instruction by its object id.
ins.metadata.__dict__["_message_id"] = ins.object_id
reply_content = RecordDict(
    {
        "arrays": ArrayRecord([v + 1.0 for v in values]),
        "metrics": MetricRecord({"num-examples": 40, "accuracy": 0.75, "loss": 0.5}),
    }
)
reply = Message(reply_content, reply_to=ins)
print(json.dumps({"ins": dump(ins), "reply": dump(reply)}, indent=1))
