"""The OpenAPI document, and Swagger UI served from an installed package: no CDN, no internet."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # ships no types

from ..problems import PROBLEM_JSON

ASSETS = "/docs/assets"
UI_SCHEMA = "/docs/openapi-3.0.json"


def install_openapi(app: FastAPI, *, max_bulk: int) -> None:
    """Document error responses as problem+json and the configured bulk limit."""

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    _problem_content(operation)
                    for parameter in operation.get("parameters", ()):
                        if parameter.get("name") == "count":
                            parameter["schema"]["maximum"] = max_bulk
            app.openapi_schema = schema
        return app.openapi_schema

    # FastAPI's documented way to extend the schema is to replace this method on the app.
    app.openapi = openapi  # type: ignore[method-assign]


def _problem_content(operation: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        content = response.get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        if status[:1] in "45" and schema.get("$ref", "").endswith("/Problem"):
            # Keep the examples the route documented under problem+json itself.
            content[PROBLEM_JSON] = content.pop("application/json") | content.get(PROBLEM_JSON, {})


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from the ``swagger_ui_bundle`` package."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + UI_SCHEMA,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(UI_SCHEMA, include_in_schema=False)
    async def ui_schema() -> JSONResponse:
        # The packaged Swagger UI (4.x) renders OpenAPI 3.0 only; FastAPI writes 3.1.
        return JSONResponse(openapi_30(app.openapi()))


def openapi_30(schema: dict[str, Any]) -> dict[str, Any]:
    """Return an OpenAPI 3.1 document rewritten in OpenAPI 3.0 terms, for Swagger UI 4."""
    converted: dict[str, Any] = _downgrade(copy.deepcopy(schema))
    converted["openapi"] = "3.0.3"
    return converted


_NULL = {"type": "null"}


def _downgrade(node: Any) -> Any:
    if isinstance(node, list):
        return [_downgrade(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _downgrade(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and _NULL in options:
            rest = [option for option in options if option != _NULL]
            del node[key]
            if len(rest) == 1 and "$ref" in rest[0]:
                node["allOf"] = rest
            elif len(rest) == 1:
                node = {**rest[0], **node}
            else:
                node[key] = rest
            node["nullable"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    examples = node.get("examples")
    if isinstance(examples, list):
        # In a 3.0 schema an example is singular.
        del node["examples"]
        if examples:
            node["example"] = examples[0]
    return node
