"""Find the files that sound alike: a cosine index over a folder written by `soundnet extract`."""

from soundnet_cli.search.folder import (
    Hit,
    QueryResult,
    audio_vector,
    index_features,
    open_index,
    precision_at,
    query_audio,
    query_key,
    query_vector,
)
from soundnet_cli.search.store import EXACT_LIMIT, StoredIndex, UpdateSummary

__all__ = [
    "EXACT_LIMIT",
    "Hit",
    "QueryResult",
    "StoredIndex",
    "UpdateSummary",
    "audio_vector",
    "index_features",
    "open_index",
    "precision_at",
    "query_audio",
    "query_key",
    "query_vector",
]
