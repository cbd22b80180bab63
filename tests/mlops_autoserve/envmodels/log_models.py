"""Log the models of the environment tests, run inside an authoring environment that has
LightGBM and emoji (the test suite's own environment has neither).

    python log_models.py TRACKING_URI LGBM_NAME EMOJI_NAME

Prints one JSON line: {"lightgbm": [v1, v2], "emoji": [v1, v2]}: two LightGBM versions with
the same requirements, and the emoji pyfunc once as logged and once with a requirement no
index can satisfy.
"""

import json
import sys
from pathlib import Path

import emoji
import lightgbm
import mlflow
import pandas as pd
from sklearn.datasets import load_iris

uri, lgbm_name, emoji_name = sys.argv[1:4]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("autoserve-environments")
X, y = load_iris(return_X_y=True, as_frame=True)
X.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in X.columns]
versions = {"lightgbm": [], "emoji": []}
for leaves in (4, 8):  # two versions with the same requirements: the second needs no build
    with mlflow.start_run():
        model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=leaves, verbose=-1).fit(X, y)
        info = mlflow.lightgbm.log_model(model, name="model", registered_model_name=lgbm_name,
                                         input_example=X.head(3))
        versions["lightgbm"].append(int(info.registered_model_version))
code = str(Path(__file__).with_name("emojify.py"))
example = pd.DataFrame({"name": ["thumbsup", "snake"]})
for requirement in (f"emoji=={emoji.__version__}", "mlops-toolkit-no-such-package==0.0.1"):
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=code, registered_model_name=emoji_name,
                                       input_example=example, pip_requirements=[requirement])
        versions["emoji"].append(int(info.registered_model_version))
print(json.dumps(versions))
