"""scripts/plots.py: DVC's plots of two revisions rendered to a page that needs no network."""
import importlib.util
import re

from flows_support import ROOT, run

DVC = str(ROOT / ".venv" / "bin" / "dvc")


def load_script():
    spec = importlib.util.spec_from_file_location("plots", ROOT / "scripts" / "plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_revisions_render_offline(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "t@localhost"], repo)
    run(["git", "config", "user.name", "t"], repo)
    run([DVC, "init", "-q"], repo)
    (repo / "dvc.yaml").write_text("plots:\n  - curve:\n      x: step\n      y:\n        curve.tsv: ndcg\n")
    for rev, values in (("first", [0.1, 0.2]), ("second", [0.3, 0.5])):
        (repo / "curve.tsv").write_text("step\tndcg\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-q", "-m", rev], repo)
        run(["git", "tag", rev], repo)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{ROOT / '.venv' / 'bin'}:{__import__('os').environ['PATH']}")
    plots = load_script()
    specs = plots.plot_specs(["first", "second"])
    assert list(specs) == ["curve"]
    assert {r["rev"] for r in specs["curve"]["data"]["values"]} == {"first", "second"}
    assert plots.main(["first", "second", "--png", "--out", str(tmp_path / "out" / "index.html")]) == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("<svg") == 1 and "first" in page and "second" in page
    assert not re.search(r"<script|src=\"http|href=\"http", page)         # nothing to fetch
    assert (tmp_path / "out" / "curve.png").read_bytes()[:4] == b"\x89PNG"
