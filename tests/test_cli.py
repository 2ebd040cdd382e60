"""The command-line tool: real runs, and one-line errors with exit code 2 on bad input."""

import hashlib

import anndata as ad
import pandas as pd
import pytest

import deepbid
from deepbid import DeepBID
from deepbid.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def h5ad(small, tmp_path):
    path = tmp_path / "in.h5ad"
    small.write_h5ad(path)
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"deepbid {deepbid.__version__}"


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["integrate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--batch-key",
        "--label-key",
        "--n-clusters",
        "--layer",
        "--seed",
        "--device",
        "--figures",
        "--output",
    ):
        assert option in text


def test_integrate_writes_h5ad_metrics_and_figures(h5ad, tmp_path, capsys):
    before = _digest(h5ad)
    out, figures = tmp_path / "out.h5ad", tmp_path / "figs"
    code = main(
        [
            "integrate",
            str(h5ad),
            "-o",
            str(out),
            "--label-key",
            "cell_type",
            "--figures",
            str(figures),
            "--n-clusters",
            "3",
            "--epochs",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    assert _digest(h5ad) == before  # the input file is never modified
    result = ad.read_h5ad(out)
    assert result.obs["deepbid_cluster"].nunique() <= 3
    assert result.obsm["X_deepbid"].shape[0] == result.n_obs
    table = pd.read_csv(out.with_suffix(".metrics.csv"), index_col=0)
    assert {"ari", "nmi", "ilisi_median", "clisi_median"} <= set(table.columns)
    assert list(table.index) == ["unintegrated PCA + Leiden", "deepbid"]
    for name in ("umap_before.png", "umap_after.png", "loss_curves.png", "k_choice.png"):
        assert (figures / name).stat().st_size > 10_000
    assert "deepbid" in capsys.readouterr().out


def _error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("deepbid: error: ") and "\n" not in err
    return err


def test_bad_files_fail_with_one_line(h5ad, tmp_path, capsys):
    out = str(tmp_path / "out.h5ad")
    assert "does not exist" in _error(["integrate", str(tmp_path / "nope.h5ad"), "-o", out], capsys)
    text = tmp_path / "table.csv"
    text.write_text("a,b\n1,2\n")
    assert "not an .h5ad" in _error(["integrate", str(text), "-o", out], capsys)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(h5ad.read_bytes()[:4000])
    assert "truncated or damaged" in _error(["integrate", str(truncated), "-o", out], capsys)


def test_refuses_to_overwrite_input_and_checks_keys(h5ad, tmp_path, capsys):
    before = _digest(h5ad)
    assert "never overwrites" in _error(["integrate", str(h5ad), "-o", str(h5ad)], capsys)
    assert _digest(h5ad) == before
    out = str(tmp_path / "out.h5ad")
    assert "batch_key 'donor'" in _error(
        ["integrate", str(h5ad), "-o", out, "--batch-key", "donor"], capsys
    )
    assert "label_key 'celltype'" in _error(
        ["integrate", str(h5ad), "-o", out, "--label-key", "celltype"], capsys
    )
    assert "unknown device" in _error(
        ["integrate", str(h5ad), "-o", out, "--device", "gpu9"], capsys
    )
    assert not (tmp_path / "out.h5ad").exists()


def test_destinations_that_would_fail_after_training_are_refused_first(
    small, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(DeepBID, "fit", lambda *args, **kwargs: pytest.fail("training ran"))
    small.obs["none"] = "unknown"
    source = tmp_path / "in.h5ad"
    small.write_h5ad(source)
    out = str(tmp_path / "out.h5ad")
    (tmp_path / "folder").mkdir()
    a_file = tmp_path / "note.txt"
    a_file.write_text("x")
    run = ["integrate", str(source), "-o"]
    assert "is a folder" in _error([*run, str(tmp_path / "folder")], capsys)
    assert "does not end in .h5ad" in _error([*run, str(tmp_path / "out.csv")], capsys)
    assert "--figures" in _error([*run, out, "--figures", str(a_file)], capsys)
    assert "--report" in _error([*run, out, "--report", str(a_file)], capsys)
    missing = str(tmp_path / "nowhere" / "m.csv")
    assert "does not exist" in _error([*run, out, "--metrics", missing], capsys)
    assert "no cell has a known label" in _error([*run, out, "--transfer-labels", "none"], capsys)
    assert "is a file" in _error(["demo", "-o", str(a_file)], capsys)
    assert not (tmp_path / "out.h5ad").exists()


def test_a_system_error_is_one_line(h5ad, tmp_path, capsys, monkeypatch):
    def refuse(source, target):
        raise PermissionError(13, "Permission denied", target)

    monkeypatch.setattr("shutil.copyfile", refuse)
    err = _error(["integrate", str(h5ad), "-o", str(tmp_path / "out.h5ad")], capsys)
    assert "Permission denied" in err and "out.h5ad" in err
