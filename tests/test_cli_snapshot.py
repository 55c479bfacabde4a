import hashlib
from pathlib import Path

import pytest

from gensar.cli import main


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_snapshot_is_deterministic_and_keeps_batches(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["snapshot", "--out", str(data)]) == 0
    first = _digest(data)
    assert {"interactions.csv", "items.csv", "README.txt"} <= set(first)
    assert "SYNTHETIC" in (data / "README.txt").read_text()

    batch = tmp_path / "new"
    batch.mkdir()
    (batch / "interactions.csv").write_text("user,item,timestamp,behavior,query\nu1,i1,1600000000,rec,\n")
    assert main(["add-batch", str(batch), "--out", str(data), "--name", "b1"]) == 0
    capsys.readouterr()
    # the same content again, under another name: a no-op with a message
    assert main(["add-batch", str(batch), "--out", str(data), "--name", "b1-resent"]) == 0
    assert "already in the snapshot as" in capsys.readouterr().out
    assert sorted(p.name for p in (data / "batches").iterdir()) == ["b1"]
    # other content under a name in use: an error in words, nothing written
    other = tmp_path / "other"
    other.mkdir()
    (other / "interactions.csv").write_text("user,item,timestamp,behavior,query\nu2,i1,1600000000,rec,\n")
    with pytest.raises(SystemExit, match=r"the name 'b1' is already used by another batch with different content"):
        main(["add-batch", str(other), "--out", str(data), "--name", "b1"])
    assert sorted(p.name for p in (data / "batches").iterdir()) == ["b1"]

    assert main(["snapshot", "--out", str(data)]) == 0  # refresh: same base bytes, batch kept
    again = _digest(data)
    assert {k: v for k, v in again.items() if not k.startswith("batches")} == first
    assert "batches/b1/interactions.csv" in again


def test_snapshot_of_a_missing_source_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        main(["snapshot", "--source", str(tmp_path / "does-not-exist"), "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()
