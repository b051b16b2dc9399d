"""Reference for kiln's early stopping: keras.callbacks.EarlyStopping driven
with scripted logs. Reads [{"curve": [...], "kwargs": {...}}] on stdin and
prints, per case, [epochs run, best epoch] (both 1-based)."""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402


def run(curve, kwargs):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = keras.callbacks.EarlyStopping(**kwargs)
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    monitor = kwargs.get("monitor", "val_loss")
    for epoch, value in enumerate(curve):
        callback.on_epoch_end(epoch, {monitor: value})
        if model.stop_training:
            return [epoch + 1, callback.best_epoch + 1]
    return [len(curve), callback.best_epoch + 1]


cases = json.load(sys.stdin)
print(json.dumps([run(c["curve"], c["kwargs"]) for c in cases]))
