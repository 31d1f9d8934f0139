"""A model card's lineage applied at commit: ``base_model`` / ``base_model_relation`` in the README's
front matter set the parent and relation of a version pushed without a base (CLI, SDK or Hub protocol).

A card naming a model this zoo does not hold (or one the pusher may not read, or a private base under a
public model) leaves the version a root: the card is free text and never fails a push. A PEFT adapter
(``adapter_config.json`` beside the card) is related as ``adapter`` unless the card says otherwise.
"""

from __future__ import annotations

import logging

from deltazoo.compression.other_files import decompress
from deltazoo.registry.errors import DeltazooError
from deltazoo.registry.models import File, Model, Version
from deltazoo.registry.objectstore import ObjectStore, blob_key
from deltazoo.registry.repositories import FileRepository
from deltazoo.services.access import Principal
from deltazoo.services.model_card import MAX_CARD_BYTES, card_lineage
from deltazoo.services.refs import RELATIONS, resolve_base
from sqlalchemy.orm import Session

log = logging.getLogger("deltazoo.card")
CARD_PATH = "README.md"
ADAPTER_CONFIG = "adapter_config.json"


def apply_card_lineage(session: Session, store: ObjectStore, version: Version, viewer: Principal) -> None:
    sketch = version.sketch or {}
    if version.parent_version_id is not None or (sketch.get("auto_base") and not sketch.get("card_first")):
        return  # a base given explicitly (or base="auto") wins over the card; a Hub commit's auto does not
    files = FileRepository(session)
    card = files.get(version.id, CARD_PATH)
    if card is None or card.size > MAX_CARD_BYTES:
        return
    lineage = card_lineage(read_uploaded(session, store, card))
    if lineage.base_model is None:
        return
    try:
        parent = resolve_base(session, lineage.base_model, viewer)
    except DeltazooError as exc:
        log.info("model card base_model %r not used: %s", lineage.base_model, exc.message)
        return
    model, parent_model = session.get(Model, version.model_id), session.get(Model, parent.model_id)
    if model is not None and parent_model is not None and parent_model.private and not model.private:
        return  # a public version must not name (or decode through) a private base
    version.parent_version_id = parent.id
    if lineage.relation in RELATIONS and version.relation == "finetune":
        version.relation = lineage.relation
    elif lineage.relation is None and files.get(version.id, ADAPTER_CONFIG) is not None:
        version.relation = "adapter"
    session.flush()


def read_uploaded(session: Session, store: ObjectStore, file: File) -> bytes:
    """The bytes of a small non-tensor file of a version being committed: its staged upload, or the
    stored file it was deduplicated against."""
    if file.staging_key:
        return store.get(file.staging_key)
    source = session.get(File, file.source_file_id) if file.source_file_id else None
    if source is None or source.blob is None:
        return b""
    compressed = store.get(blob_key(source.blob))
    return decompress(compressed, file.size)
