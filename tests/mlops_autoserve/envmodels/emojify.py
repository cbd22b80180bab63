"""A custom pyfunc (MLflow "models from code") that needs ``emoji``, a package the
serving environment does not have: it can only serve from an environment built for it."""

import mlflow


class Emojify(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        import emoji

        return [emoji.emojize(f":{name}:", language="alias") for name in model_input["name"]]


mlflow.models.set_model(Emojify())
