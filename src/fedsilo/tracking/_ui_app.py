"""The MLflow server ``fedsilo tracking ui`` runs: MLflow's own app, opening in training view.

MLflow 3.17's UI shows an experiment in one of two views, chosen by the switch at its top
(*GenAI* | *Model training*): the GenAI view lists a run without a model output under
"Evaluation runs", next to traces and prompts; the training view lists runs with their
metrics, parameters and charts. Each browser remembers its choice (``localStorage`` key
``mlflow.workflowType_v1``, or ``?workflowType=`` in the page's address), and a browser that
never chose starts in GenAI. That UI does not read the experiment's
``mlflow.experimentKind`` tag to choose (fedsilo sets it all the same: it is MLflow's mark
of a training experiment, shown in the experiment's kind selector).

So the page this app serves carries one line more than MLflow's: in a browser that has
never chosen a view, the training view becomes its choice. A browser switched to GenAI
keeps GenAI. Everything else is MLflow's app, untouched. MLflow finds this app through the
``mlflow.app`` entry point ``fedsilo`` (``mlflow server --app-name fedsilo``).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["TRAINING_VIEW_SCRIPT", "TrainingViewFirst"]  # and ``app``, made on first use

_WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's UI: key "mlflow.workflowType", version 1

TRAINING_VIEW_SCRIPT = (
    "<script>try{var k='" + _WORKFLOW_KEY + "';"
    "if(window.localStorage.getItem(k)===null)"
    "{window.localStorage.setItem(k,JSON.stringify('machine_learning'))}}catch(e){}</script>"
).encode()
"""Makes the training view the choice of a browser that has not chosen one."""

_PAGES = frozenset({"/", "/index.html"})


class TrainingViewFirst:
    """ASGI middleware: MLflow's UI page with :data:`TRAINING_VIEW_SCRIPT` first in its head.

    Only a successful HTML answer to ``GET /`` changes; every other request and answer
    passes through as MLflow's app gives it.
    """

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in _PAGES:
            await self.inner(scope, receive, send)
            return
        held: list[Message] = []

        async def patched(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            if message["type"] != "http.response.body" or not held:
                await send(message)
                return
            held.append(message)
            if message.get("more_body", False):
                return
            start, *parts = held
            held.clear()
            body = b"".join(part.get("body", b"") for part in parts)
            start, body = _with_script(start, body)
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.inner(scope, receive, patched)


def _with_script(start: Message, body: bytes) -> tuple[Message, bytes]:
    """The page's answer with the script added, when it is MLflow's HTML page."""
    headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
    kinds = [v for k, v in headers if k.lower() == b"content-type"]
    is_html = bool(kinds) and kinds[0].startswith(b"text/html")
    if start.get("status") != 200 or not is_html or b"<head>" not in body:
        return start, body
    body = body.replace(b"<head>", b"<head>" + TRAINING_VIEW_SCRIPT, 1)
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"etag")]
    kept.append((b"content-length", str(len(body)).encode()))
    return {**start, "headers": kept}, body


def _mlflow_app() -> ASGIApp:
    from mlflow.server.fastapi_app import app as mlflow_app

    return TrainingViewFirst(mlflow_app)


def __getattr__(name: str) -> ASGIApp:
    """``app``, built on first access: importing this module does not import MLflow's."""
    if name == "app":
        return _mlflow_app()
    raise AttributeError(name)
