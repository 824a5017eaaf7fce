"""Bearer tokens of `mssgate consumer add`: each one is a consumer scoped to one mailbox."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mssgate.api.problems import ApiProblem
from mssgate.directory.consumers import Consumers
from mssgate.directory.models import Consumer

bearer = HTTPBearer(auto_error=False, description="A consumer token (mssgate consumer add)")


def current_consumer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Consumer:
    # Looked up on every request so that `consumer revoke` takes effect at once.
    consumers: Consumers = request.app.state.consumers
    consumer = consumers.by_token(credentials.credentials) if credentials is not None else None
    if consumer is None:
        raise ApiProblem(
            401,
            "a valid consumer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="mssgate"'},
        )
    return consumer


CurrentConsumer = Annotated[Consumer, Depends(current_consumer)]
