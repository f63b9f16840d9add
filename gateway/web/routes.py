"""What the application serves: its routes, and the endpoint label metrics give each request."""

from __future__ import annotations

from starlette.routing import Route

from gateway.web import admin, anthropic, conversations, info, openai, responses

ROUTES = [
    Route("/health", info.health, methods=["GET"]),
    Route("/health/ready", info.ready, methods=["GET"]),
    Route("/metrics", info.metrics, methods=["GET"]),
    Route("/v1/models", info.list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", info.get_model, methods=["GET"]),
    Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
    Route("/v1/completions", openai.completions, methods=["POST"]),
    Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
    Route("/v1/messages", anthropic.messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", anthropic.count_tokens, methods=["POST"]),
    Route("/v1/responses", responses.create, methods=["POST"]),
    Route("/v1/responses/input_tokens", responses.input_tokens, methods=["POST"]),
    Route("/v1/responses/{id}", responses.retrieve, methods=["GET"]),
    Route("/v1/responses/{id}", responses.delete, methods=["DELETE"]),
    Route("/v1/responses/{id}/input_items", responses.input_items, methods=["GET"]),
    Route("/v1/conversations", conversations.create, methods=["POST"]),
    Route("/v1/conversations/{id}", conversations.retrieve, methods=["GET"]),
    Route("/v1/conversations/{id}", conversations.update, methods=["POST"]),
    Route("/v1/conversations/{id}", conversations.delete, methods=["DELETE"]),
    Route("/v1/conversations/{id}/items", conversations.add_items, methods=["POST"]),
    Route("/v1/conversations/{id}/items", conversations.list_items, methods=["GET"]),
    Route("/v1/conversations/{id}/items/{item_id}", conversations.get_item, methods=["GET"]),
    Route("/v1/conversations/{id}/items/{item_id}", conversations.delete_item, methods=["DELETE"]),
    Route("/extras/tokenize", openai.tokenize, methods=["POST"]),
    Route("/extras/detokenize", openai.detokenize, methods=["POST"]),
    Route("/admin/models", admin.list_running, methods=["GET"]),
    Route("/admin/models/{model:path}/load", admin.load, methods=["POST"]),
    Route("/admin/models/{model:path}/unload", admin.unload, methods=["POST"]),
    Route("/admin/reload", admin.reload, methods=["POST"]),
    Route("/admin/requests", admin.recent_requests, methods=["GET"]),
    Route("/admin/usage", admin.usage, methods=["GET"]),
]


def endpoint_label(path: str) -> str:
    """The route a path matches, as its template (`/v1/models/{model}`): a fixed set of names, so
    unknown paths cannot blow up the metrics' label set."""
    for route in ROUTES:
        if route.path_regex.match(path):
            return route.path.replace(":path}", "}")
    return "other"


def is_api_call(method: str, path: str) -> bool:
    """A request the recent-requests list shows: a call on the API, not the console's (or a
    dashboard's) polling of the model list, admin, health or metrics."""
    if method == "GET" and path.startswith("/v1/models"):
        return False
    return path.startswith(("/v1/", "/extras/"))
