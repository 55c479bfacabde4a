"""The deployments' own checkout: scheduled runs never touch an engineer's workspace.

`prefect.yaml`'s pull steps call this before every run of a deployment: it clones the repository
(once) into a checkout of its own on the `production` branch, brings it up to date with the
repository's `production` branch, points its DVC cache and remote at the repository's (so nothing is
copied twice and versions published here are in the same remote), and restores the data and models
of its last commit. The flow then runs there; a published version is committed on `production`,
tagged in the model registry (`gensar-onnx@v<N>.0.0`, `gensar-onnx#prod#<n>`) and pushed back to the
repository with its tags (`tasks.versioning.git_commit_version`). So an experiment in the workspace
(`dvc exp run`, a changed params.yaml, a half-trained model) never changes what the deployment
trains on or serves, and code reaches production only when someone merges it into `production`:

    git branch production main          # the first release (the first run does this if it is missing)
    git checkout production && git merge main && git checkout main     # later releases

    python -m flows.checkout --origin /path/to/repo --to /path/to/repo-production   # prints the checkout

The checkout's default place is beside the repository: `<repo>-production` (`GENSAR_PRODUCTION_DIR`
overrides it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tasks.stages import dvc_repo
from tasks.versioning import PRODUCTION_BRANCH as BRANCH
from tasks.versioning import git

logger = logging.getLogger(__name__)


def default_dir(origin: Path) -> Path:
    return Path(os.environ.get("GENSAR_PRODUCTION_DIR") or origin.with_name(f"{origin.name}-{BRANCH}"))


def production_checkout(origin: str | Path, directory: str | Path | None = None) -> Path:
    """Clone or update the production checkout of `origin` in `directory`; returns its path."""
    from dvc.exceptions import DvcException

    origin = Path(origin).resolve()
    directory = Path(directory).resolve() if directory else default_dir(origin)
    if not git(origin, "branch", "--list", BRANCH):           # first release: production starts at main
        git(origin, "branch", BRANCH, git(origin, "rev-parse", "--abbrev-ref", "HEAD"))
        logger.info("checkout: created branch %s in %s", BRANCH, origin)
    if not (directory / ".git").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        git(directory.parent, "clone", "-q", "--branch", BRANCH, str(origin), str(directory))
        logger.info("checkout: cloned %s (%s) into %s", origin, BRANCH, directory)
    else:
        dirty = git(directory, "status", "--porcelain", "--untracked-files=no")
        if dirty:
            raise RuntimeError(f"the production checkout {directory} has changes nobody committed:\n{dirty}\n"
                               "it belongs to the deployments: commit them on a branch of the repository instead")
        git(directory, "fetch", "-q", "origin")
        git(directory, "checkout", "-q", BRANCH)
        git(directory, "merge", "-q", "--ff-only", f"origin/{BRANCH}")
    with dvc_repo(origin) as o:                               # DVC: the repository's cache and remote
        cache = o.cache.local.path.removesuffix("/files/md5")
        remote = o.config["core"].get("remote")
        url = o.config["remote"][remote]["url"] if remote else None
    with dvc_repo(directory) as r, r.config.edit("local") as conf:   # .dvc/config.local: not in git
        conf["cache"]["dir"] = cache
        if url:
            conf["core"]["remote"] = remote
            conf["remote"][remote] = {"url": url}
    with dvc_repo(directory) as r:                            # the data and models of the last commit
        try:
            r.checkout(force=True)                             # from the shared cache
        except DvcException:
            try:
                r.pull(force=True)                             # what the cache lacks, from the remote
            except DvcException as e:      # never produced (a first run): the stages will make them
                logger.warning("checkout: not restored (the stages will run): %s", str(e).splitlines()[0])
    logger.info("checkout: %s at %s (%s)", directory, git(directory, "rev-parse", "--short", "HEAD"), BRANCH)
    return directory


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--origin", default=".", help="the repository (default: here)")
    ap.add_argument("--to", default=None, help="the checkout (default: <origin>-production)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    print(production_checkout(args.origin, args.to))          # stdout: the path, for the next pull step


if __name__ == "__main__":
    main()
