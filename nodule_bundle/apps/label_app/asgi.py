"""MONAI Label's server with the bundle's request checks in front of it.

Start it with ``monailabel start_server --app ... --uvicorn_app nodule_bundle.apps.label_app.asgi:app``
(:func:`~nodule_bundle.apps.label_app.server.start_server` does). MONAI Label's own ``/infer/<model>``
answers ``500`` when ``params`` is not a JSON object, when no image is named or when the model is not
served, before the app is asked, and after inference when ``output=dicom_seg`` is asked of a datastore
that is not DICOMweb; here such a request gets a ``422`` or ``404`` that says what is wrong.
Everything else is MONAI Label's app unchanged.
"""

from __future__ import annotations

import json

from monailabel.app import app
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.utils.app import app_instance
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def infer_request_problem(request: Request) -> tuple[int, str] | None:
    """What is wrong with a ``POST /infer/<model>`` request (its HTTP status and a message), or None."""
    model = request.url.path.removeprefix("/infer/")
    served = sorted(app_instance().info().get("models", {}))
    if model not in served:
        return 404, f"unknown model {model[:80]!r}: this server serves {served}"
    try:
        form = await request.form()
    except Exception as err:  # Starlette's multipart / form parsing errors
        return 400, f"the request body is not a readable form: {err}"
    problem = _form_problem(request, form)
    await form.close()
    return (422, problem) if problem else None


def _form_problem(request: Request, form: FormData) -> str | None:
    """What is wrong with the form of a ``POST /infer/<model>`` request, or None."""
    params = form.get("params")
    if params is not None and not isinstance(params, str):
        return "params must be a form field holding a JSON object, not a file"
    if params:
        try:
            parsed = json.loads(params)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return f"params must be a JSON object, got {params[:80]!r}"
    if not (request.query_params.get("image") or request.query_params.get("session_id") or form.get("file")):
        return "no image: give an image id (?image=<id>), a session_id or a file"
    if request.query_params.get("output") == "dicom_seg" and not isinstance(app_instance().datastore(), DICOMWebDatastore):
        return "output=dicom_seg needs a DICOMweb datastore (start the server with --studies <DICOMweb URL>)"
    return None


class InferRequestGuard:
    """ASGI middleware: a malformed ``POST /infer/<model>`` gets a 4xx naming the problem (404 for a model
    this server does not serve, 400 for an unreadable form, 422 otherwise); a well-formed one goes on
    to MONAI Label with its body as received."""

    def __init__(self, asgi_app: ASGIApp):
        self.app = asgi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/infer/"):
            await self.app(scope, receive, send)
            return
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        received = b"".join(body)

        def replay() -> Receive:
            sent = False

            async def receive_again() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": received, "more_body": False}
                return await receive()

            return receive_again

        problem = await infer_request_problem(Request(scope, replay()))
        if problem:
            status, message = problem
            await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, replay(), send)


app.add_middleware(InferRequestGuard)
