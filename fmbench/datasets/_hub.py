"""Download one file from the Hugging Face hub (or find it in the local hub cache)."""

from __future__ import annotations

import os
from pathlib import Path

from fmbench.errors import DatasetError


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` now, else huggingface_hub's (which read it at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cached(repo_id: str, filename: str, repo_type: str) -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)


def hub_reachable(endpoint: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the hub opens (True behind a proxy, which only the download can test).

    Without it, huggingface_hub retries an unreachable hub with backoff for about 25 s, logging a
    warning per attempt, before it says it is offline.
    """
    import socket
    import urllib.parse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # huggingface_hub answers at once itself
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return True
    parts = urllib.parse.urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline(where: str, endpoint: str) -> DatasetError:
    return DatasetError(f"{where}: not in the local hub cache and the hub ({endpoint}) cannot be reached "
                        "(offline?); download it on a connected machine or use a local file")


def check_hub_file(repo_id: str, filename: str, repo_type: str = "dataset") -> None:
    """Fail at once, in one line, when a hub file is not cached and the hub cannot be reached.

    Raises:
        DatasetError: as `hub_download` says it when huggingface_hub has given up.
    """
    try:
        endpoint = hub_endpoint()
    except ImportError:
        return  # `hub_download` says what to install
    if not hub_cached(repo_id, filename, repo_type) and not hub_reachable(endpoint):
        raise _offline(f"{repo_id}/{filename} ({repo_type} repository on the Hugging Face hub)", endpoint)


def hub_download(repo_id: str, filename: str, repo_type: str = "dataset") -> Path:
    """Path of ``filename`` from hub repo ``repo_id``, downloaded into the hub cache if needed.

    Honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_TOKEN`` as huggingface_hub does.

    Raises:
        DatasetError: huggingface_hub is not installed, the hub cannot be reached and the file is not
            cached, or the repository/file does not exist. The message names repo and file.
    """
    where = f"{repo_id}/{filename} ({repo_type} repository on the Hugging Face hub)"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise DatasetError(f"{where}: huggingface_hub is not installed (pip install huggingface_hub)") from exc
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import LocalEntryNotFoundError  # type: ignore[no-redef]
    endpoint = hub_endpoint()
    check_hub_file(repo_id, filename, repo_type)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type=repo_type, endpoint=endpoint))
    except LocalEntryNotFoundError as exc:
        raise _offline(where, endpoint) from exc
    except Exception as exc:  # RepositoryNotFound, EntryNotFound, HTTP errors: translated here, once
        raise DatasetError(f"{where}: download failed: {exc.__class__.__name__}: {exc}") from exc
