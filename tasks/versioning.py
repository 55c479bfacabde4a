"""DVC and git bookkeeping of a version: `dvc add`, `dvc push`, a git commit + registry tags, restoring one.

A published version is a git commit holding `dvc.lock` (hashes of every stage's outputs: canonical
data, embeddings, identifiers, checkpoint, ONNX export), `data.dvc` (the raw snapshot),
`published.dvc` (the published model + its metrics) and `metrics/*.json`; the files themselves are in
the DVC cache and pushed to the DVC remote. The commit carries the tags of DVC's model registry
(GTO, written through `gto.api`): `gensar-onnx@v<N>.0.0` registers version N of the `gensar-onnx`
artifact that `dvc.yaml` declares, and `gensar-onnx#prod#<n>` assigns it to the `prod` stage. So

    git checkout gensar-onnx@v<N>.0.0 && dvc checkout     (or `dvc pull` on another machine)
    dvc artifacts get <repo> gensar-onnx --stage prod     (the served export, without a checkout)
    gto show gensar-onnx                                  (the versions and their stages)

restore or fetch exactly that version.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import task

from gensar.publish import ARTIFACT, version_name, version_number, version_tag
from tasks import run_logger
from tasks.stages import dvc_repo

STAGE = "prod"               # the registry stage of the version the flows publish
PRODUCTION_BRANCH = "production"   # the deployments' checkout (flows/checkout.py) publishes on this branch
# what a version commit records (paths that do not exist are left out)
VERSION_FILES = ["dvc.lock", "data.dvc", "published.dvc", "metrics", "params.yaml", "dvc.yaml", ".gitignore"]


def git(repo: str | Path, *args: str, check: bool = True) -> str:
    """Run git in `repo`; raise with git's own message on failure."""
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} (in {repo}) failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


FLOW_AUTHOR = {"author": "gensar-flow", "author_email": "gensar-flow@localhost"}


def _git_identity(repo) -> list[str]:
    """`-c user.name/email` for machines where git has no identity (scheduled workers)."""
    if git(repo, "config", "user.email", check=False):
        return []
    return ["-c", f"user.name={FLOW_AUTHOR['author']}", "-c", f"user.email={FLOW_AUTHOR['author_email']}"]


def version_tags(repo: str | Path) -> list[int]:
    """Version numbers N of the registered versions of the artifact (`gensar-onnx@v<N>.0.0`), ascending."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        versions = gto.api.show(str(repo), ARTIFACT, registered_only=True)
    except ArtifactNotFound:         # nothing registered yet
        return []
    return sorted(version_number(v["version"]) for v in versions)


def stage_version(repo: str | Path, stage: str = STAGE) -> int | None:
    """The version N assigned to `stage` (the one the flows publish), None before the first."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        found = gto.api.find_versions_in_stage(str(repo), ARTIFACT, stage)
    except ArtifactNotFound:
        return None
    return version_number(found[0].version) if found else None


def next_version(repo: str | Path) -> int:
    tags = version_tags(repo)
    return (tags[-1] + 1) if tags else 1


def dvc_add_path(repo: str | Path, path: str) -> str:
    """`dvc add <path>`: hash it into the cache and write <path>.dvc; returns the new md5."""
    with dvc_repo(repo) as r:
        stages = r.add([path])
    md5 = stages[0].outs[0].hash_info.value
    run_logger(__name__).info("dvc add %s: %s", path, md5)
    return md5


def dvc_push_all(repo: str | Path) -> int:
    """`dvc push` to the default remote; returns the number of files transferred."""
    with dvc_repo(repo) as r:
        n = r.push()
    run_logger(__name__).info("dvc push: %s files transferred to the remote", n)
    return n


def git_commit_version(repo: str | Path, version: int, message: str) -> str:
    """Commit the version files, register the commit as version N of the artifact and assign it to
    the `prod` stage (GTO tags); returns the commit hash."""
    repo = Path(repo)
    paths = [p for p in VERSION_FILES if (repo / p).exists()]
    paths += [p for p in _output_gitignores(repo) if p not in paths]
    git(repo, "add", "--", *paths)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo, check=False).returncode == 0:
        run_logger(__name__).info("git: nothing changed in %s, tagging HEAD", ", ".join(paths))
    else:
        git(repo, *_git_identity(repo), "commit", "-q", "-m", message, "--", *paths)
    import gto.api

    author = FLOW_AUTHOR if _git_identity(repo) else {}
    title = message.splitlines()[0]
    gto.api.register(str(repo), ARTIFACT, "HEAD", version=version_name(version), message=title, **author)
    gto.api.assign(str(repo), ARTIFACT, STAGE, version=version_name(version), message=f"{STAGE}: {title}", **author)
    commit = git(repo, "rev-parse", "HEAD")
    run_logger(__name__).info("git: committed %s, registered it as %s and assigned it to %s", commit[:10],
                              version_tag(version), STAGE)
    return commit


def git_push_version(repo: str | Path) -> list[str]:
    """In the deployments' checkout (branch `production` with an `origin`): push the version commit and
    its registry tags back to the repository, so `gto show` / `dvc artifacts get` there see it.
    Elsewhere (an engineer's run of the flow in a workspace) nothing is pushed. Returns what was pushed."""
    repo = Path(repo)
    if git(repo, "rev-parse", "--abbrev-ref", "HEAD") != PRODUCTION_BRANCH or \
            "origin" not in git(repo, "remote").split():
        return []
    refs = [f"refs/heads/{PRODUCTION_BRANCH}"] + [f"refs/tags/{t}" for t in git(repo, "tag", "--points-at", "HEAD").split()]
    git(repo, "push", "-q", "origin", *refs)
    run_logger(__name__).info("git: pushed %s to origin", ", ".join(r.split("/", 2)[2] for r in refs))
    return refs


def _output_gitignores(repo: Path) -> list[str]:
    """The .gitignore files DVC writes beside stage outputs (e.g. prepared/.gitignore), if git tracks them."""
    import yaml

    stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    parents = {Path(next(iter(o)) if isinstance(o, dict) else o).parent for st in stages.values()
               for o in st.get("outs") or []}
    found = []
    for parent in sorted(parents):
        f = parent / ".gitignore"
        if str(parent) != "." and (repo / f).exists() and \
                subprocess.run(["git", "check-ignore", "-q", str(f)], cwd=repo, check=False).returncode != 0:
            found.append(str(f))
    return found


def restore_version(repo: str | Path, rev: str, pull: bool = False) -> None:
    """Check out `rev` (a tag like gensar-onnx@v1.0.0) in git and its data/models with `dvc checkout` (or pull)."""
    git(repo, "checkout", "-q", rev)
    with dvc_repo(repo) as r:
        if pull:
            r.pull(force=True)
        else:
            r.checkout(force=True)


# I/O against the remote and the cache can fail transiently: retry with backoff.
dvc_add = task(dvc_add_path, name="dvc-add", retries=2, retry_delay_seconds=[2, 10])
dvc_push = task(dvc_push_all, name="dvc-push", retries=3, retry_delay_seconds=[5, 30, 120])
git_version = task(git_commit_version, name="git-commit-tag")
git_push = task(git_push_version, name="git-push", retries=3, retry_delay_seconds=[5, 30, 120])
