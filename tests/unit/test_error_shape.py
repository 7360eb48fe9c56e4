"""One Elasticsearch error shape for the proxy's answers and the embedded engine's."""
import json

from selproxy.engine.errors import IllegalArgument, IndexNotFound
from selproxy.errors import BadRequest, error_document


def test_the_proxy_and_the_engine_render_the_same_shape():
    proxy = json.loads(BadRequest("bad things").body())
    engine = IllegalArgument("bad things").body()
    assert proxy == engine == {
        "error": {"root_cause": [{"type": "illegal_argument_exception", "reason": "bad things"}],
                  "type": "illegal_argument_exception", "reason": "bad things"},
        "status": 400}


def test_engine_metadata_sits_beside_type_and_reason():
    body = IndexNotFound("books").body()
    cause = {"type": "index_not_found_exception", "reason": "no such index [books]",
             "resource.type": "index_or_alias", "resource.id": "books", "index_uuid": "_na_",
             "index": "books"}
    assert body == error_document(404, cause) == {"error": {"root_cause": [cause], **cause}, "status": 404}
