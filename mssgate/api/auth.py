"""Bearer tokens of `mssgate consumer add`: each one is a consumer scoped to one mailbox."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mssgate.api.problems import ApiProblem
from mssgate.directory.consumers import INVALID_TOKEN, Consumers, TokenRefused
from mssgate.directory.models import Consumer

bearer = HTTPBearer(auto_error=False, description="A consumer token (mssgate consumer add)")


def current_consumer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Consumer:
    # Looked up on every request so that `consumer revoke` takes effect at once.
    # The mailbox is read with the token: a suspended or removed mailbox's consumer is
    # refused from its next request on.
    consumers: Consumers = request.app.state.consumers
    if credentials is None:
        found: Consumer | TokenRefused = TokenRefused(INVALID_TOKEN)
    else:
        found = consumers.authenticate(credentials.credentials)
    if isinstance(found, TokenRefused):
        raise ApiProblem(401, found.reason, headers={"WWW-Authenticate": 'Bearer realm="mssgate"'})
    return found


CurrentConsumer = Annotated[Consumer, Depends(current_consumer)]
