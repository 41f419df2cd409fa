"""A stand-in for the Hub, which tests cannot reach, patched at the narrowest boundary: the `HfApi` calls that
`push_to_hub`, `Trainer` and `transformers_flex.hub` make (`create_repo`, `create_commit`, `list_repo_files`, the
README metadata check `_validate_yaml` that `upload_folder` asks the Hub for; `upload_folder` takes its path for
machines without hf_xet) and
the card read that pushes do first (`huggingface_hub.repocard.hf_hub_download`). Every commit is materialised into
a local Hub cache layout (`models--<namespace>--<name>/{refs/main,snapshots/<sha>/...}`), so that a process with
`HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=<cache>` loads `from_pretrained(<repo id>)` from it as it would after a
download. Everything above those calls (upload_folder's file selection, the commit operations, Trainer's push
schedule, ModelCard parsing) is the real code."""

import hashlib
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import huggingface_hub
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, ModelCard, RepoUrl, repocard
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

ENDPOINT = "https://huggingface.co"


class LocalHub:
    """Repos as snapshot folders under `cache`; `commits[repo_id]` lists each commit's files, oldest first."""

    def __init__(self, cache: Path, fail_commits: int = 0):
        self.cache = Path(cache)
        self.commits: dict[str, list[dict]] = {}
        self.fail_commits = fail_commits  # the next n commits fail after reading their files (an interrupted push)
        self.lock = threading.Lock()  # Trainer pushes from a background thread

    def repo_folder(self, repo_id: str) -> Path:
        return self.cache / f"models--{repo_id.replace('/', '--')}"

    def snapshot(self, repo_id: str) -> Path | None:
        ref = self.repo_folder(repo_id) / "refs" / "main"
        return self.repo_folder(repo_id) / "snapshots" / ref.read_text() if ref.is_file() else None

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The repo's files at its latest commit."""
        snapshot = self.snapshot(repo_id)
        if snapshot is None:
            return {}
        return {
            path.relative_to(snapshot).as_posix(): path.read_bytes() for path in snapshot.rglob("*") if path.is_file()
        }

    # --- the patched HfApi methods -----------------------------------------------------------------------------

    def create_repo(self, api, repo_id: str, *args, exist_ok: bool = False, **kwargs) -> RepoUrl:
        validate_repo_id(repo_id)
        repo_id = repo_id if "/" in repo_id else f"user/{repo_id}"  # the token's namespace
        (self.repo_folder(repo_id) / "refs").mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"{ENDPOINT}/{repo_id}", endpoint=ENDPOINT)

    def create_commit(self, api, repo_id: str, operations, commit_message: str = "", *args, **kwargs) -> CommitInfo:
        with self.lock:
            if not self.repo_folder(repo_id).is_dir():
                raise RepositoryNotFoundError(f"{repo_id} does not exist (create_repo first).")
            files = self.files(repo_id)
            for operation in operations:
                if isinstance(operation, CommitOperationAdd):
                    source = operation.path_or_fileobj
                    files[operation.path_in_repo] = (
                        Path(source).read_bytes()
                        if isinstance(source, str | Path)
                        else (source if isinstance(source, bytes) else source.read())
                    )
                elif isinstance(operation, CommitOperationDelete):
                    prefix = operation.path_in_repo
                    files = {
                        name: data for name, data in files.items() if not (name == prefix or name.startswith(prefix))
                    }
            if self.fail_commits:
                self.fail_commits -= 1
                raise ConnectionError("stand-in: the connection dropped during the upload")
            sha = hashlib.sha1(repr(sorted((n, hashlib.sha1(d).hexdigest()) for n, d in files.items())).encode())
            sha = hashlib.sha1((sha.hexdigest() + str(len(self.commits.get(repo_id, [])))).encode()).hexdigest()
            snapshot = self.repo_folder(repo_id) / "snapshots" / sha
            for name, data in files.items():
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                (snapshot / name).write_bytes(data)
            (self.repo_folder(repo_id) / "refs" / "main").write_text(sha)
            self.commits.setdefault(repo_id, []).append({"message": commit_message, "files": set(files)})
        return CommitInfo(
            commit_url=f"{ENDPOINT}/{repo_id}/commit/{sha}",
            commit_message=commit_message,
            commit_description="",
            oid=sha,
        )

    def list_repo_files(self, api, repo_id: str, *args, **kwargs) -> list[str]:
        return sorted(self.files(repo_id))

    def validate_yaml(self, api, content: str, *args, **kwargs) -> None:
        """The Hub's check of a README's metadata before an upload, done locally: the card must parse strictly."""
        ModelCard(content, ignore_metadata_errors=False)

    def card_download(self, repo_id: str, filename: str, *args, **kwargs) -> str:
        """`hf_hub_download` as ModelCard.load calls it: the file's local path, or the Hub's missing-entry error."""
        snapshot = self.snapshot(repo_id)
        if snapshot is None or not (snapshot / filename).is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        return str(snapshot / filename)


@contextmanager
def local_hub(cache: Path, fail_commits: int = 0):
    """Patch the Hub boundary for the `with` block; yields the LocalHub."""
    hub = LocalHub(cache, fail_commits)

    def method(name):
        return lambda api, *args, **kwargs: getattr(hub, name)(api, *args, **kwargs)

    with (
        mock.patch.object(huggingface_hub.HfApi, "create_repo", method("create_repo")),
        mock.patch.object(huggingface_hub.HfApi, "create_commit", method("create_commit")),
        mock.patch.object(huggingface_hub.HfApi, "list_repo_files", method("list_repo_files")),
        mock.patch.object(huggingface_hub.HfApi, "_validate_yaml", method("validate_yaml")),
        mock.patch.object(repocard, "hf_hub_download", hub.card_download),
        # upload_folder's hf_xet path streams batches to the Hub's storage before committing; its plain path (no
        # hf_xet installed) selects the same files and commits them through create_commit.
        mock.patch.object(huggingface_hub.hf_api, "is_xet_available", lambda: False),
    ):
        yield hub
    shutil.rmtree(cache / ".locks", ignore_errors=True)
