"""Reads a TensorBoard log dir with TensorBoard's own Python readers and prints
what they see as JSON, for tests/tensorboard_reader.rs to compare with what was
written.

Usage: python read_events.py LOGDIR RUN [RUN...]

* per run, `EventAccumulator`: tags, every scalar (step, value, wall_time), and
  the hparams plugin's content decoded with `plugin_data_pb2`;
* for the whole log dir, the HParams plugin's own HTTP handlers
  (`/experiment`, `/session_groups`) served over a `MultiplexerDataProvider`,
  i.e. what TensorBoard's HParams tab requests.
"""

import json
import os
import sys

from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import hparams_plugin
from tensorboard.plugins.hparams import plugin_data_pb2
from google.protobuf import json_format
from werkzeug import test as werkzeug_test


def value_json(v):
    kind = v.WhichOneof("kind")
    return {"kind": kind, "value": getattr(v, kind)}


def read_run(path):
    ea = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    out = {
        "tags": {k: sorted(v) for k, v in tags.items() if isinstance(v, list)},
        "scalars": {
            tag: [[e.step, e.value, e.wall_time] for e in ea.Scalars(tag)]
            for tag in tags["scalars"]
        },
        "file_version": ea.file_version,
    }
    hp = {}
    for tag, content in ea.PluginTagToContent("hparams").items():
        meta = ea.SummaryMetadata(tag)
        assert meta.plugin_data.plugin_name == "hparams", meta
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        which = data.WhichOneof("data")
        entry = {"version": data.version, "data": which}
        if which == "experiment":
            exp = data.experiment
            entry["hparam_infos"] = [
                [i.name, api_pb2.DataType.Name(i.type)] for i in exp.hparam_infos
            ]
            entry["metric_tags"] = [[m.name.group, m.name.tag] for m in exp.metric_infos]
        elif which == "session_start_info":
            entry["hparams"] = {
                k: value_json(v) for k, v in data.session_start_info.hparams.items()
            }
        elif which == "session_end_info":
            entry["status"] = api_pb2.Status.Name(data.session_end_info.status)
        hp[tag] = entry
    out["hparams"] = hp
    return out


def hparams_plugin_view(logdir):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    ctx = base_plugin.TBContext(logdir=logdir, data_provider=provider, multiplexer=multiplexer)
    plugin = hparams_plugin.HParamsPlugin(ctx)
    apps = plugin.get_plugin_apps()
    client = werkzeug_test.Client(lambda environ, start: apps[environ["PATH_INFO"]](environ, start))
    exp = client.post("/experiment", json={"experimentName": ""})
    assert exp.status_code == 200, exp.get_data(as_text=True)
    groups = client.post(
        "/session_groups",
        json={"experimentName": "", "startIndex": 0, "sliceSize": 100,
              "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
              "colParams": []},
    )
    assert groups.status_code == 200, groups.get_data(as_text=True)
    return {"experiment": json.loads(exp.get_data()), "session_groups": json.loads(groups.get_data())}


def main():
    logdir, runs = sys.argv[1], sys.argv[2:]
    out = {"runs": {r: read_run(os.path.join(logdir, r)) for r in runs}}
    out["plugin"] = hparams_plugin_view(logdir)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
