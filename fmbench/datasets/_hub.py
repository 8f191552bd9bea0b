"""Download one file from the Hugging Face hub (or find it in the local hub cache)."""

from __future__ import annotations

from pathlib import Path

from fmbench.errors import DatasetError


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
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type=repo_type))
    except LocalEntryNotFoundError as exc:
        raise DatasetError(
            f"{where}: not in the local hub cache and the hub cannot be reached (offline?); "
            "download it on a connected machine or use a local file"
        ) from exc
    except Exception as exc:  # RepositoryNotFound, EntryNotFound, HTTP errors: translated here, once
        raise DatasetError(f"{where}: download failed: {exc.__class__.__name__}: {exc}") from exc
