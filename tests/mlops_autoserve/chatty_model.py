"""A custom pyfunc (MLflow "models from code") that prints as many bytes as each row asks
for: a real serve process whose output a test can flood on purpose."""

import sys

import mlflow


class Chatty(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        sizes = [int(n) for n in model_input["bytes"]]
        for n in sizes:
            sys.stdout.write(f"chatty {n} " + "x" * n + "\n")
        sys.stdout.flush()
        return sizes


mlflow.models.set_model(Chatty())
