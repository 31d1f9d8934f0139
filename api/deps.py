"""Request-scoped dependencies: one DB session per request (commits once, or rolls back)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from deltazoo.registry.db import session_scope
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.settings import Settings
from fastapi import Depends, Request
from sqlalchemy.orm import Session


def db_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings) as session:
        yield session


def object_store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


def enqueuer(request: Request) -> Callable[[int], None]:
    return request.app.state.dispatcher.submit  # type: ignore[no-any-return]


def settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


# scope="function": the session commits before the response is sent, so a client that reads
# right after a write sees it (and jobs are enqueued only after the commit).
DB = Annotated[Session, Depends(db_session, scope="function")]
Store = Annotated[ObjectStore, Depends(object_store)]
Enqueue = Annotated[Callable[[int], None], Depends(enqueuer)]
ServerSettings = Annotated[Settings, Depends(settings)]
