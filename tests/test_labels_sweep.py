"""sweep=labels end to end, on a reduced grid: label recovery only, a table in CSV and Markdown."""

import pandas as pd


def test_labels_sweep_writes_the_label_table(run_cli, tmp_path):
    out = tmp_path / "labels"
    done = run_cli(
        "sweep=labels",
        "seeds=1",
        "threads=1",
        "hydra.sweeper.params.batch_size='1,8,48'",
        "hydra.sweeper.params.dup_ratio='0,1'",
        f"hydra.sweep.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "labels.csv", dtype=str).set_index(["B", "r"])
    assert (out / "labels.md").read_text().startswith("| B | r |")
    untrained = [c for c in table.columns if c.endswith("(untrained)")]
    assert len(untrained) >= 6
    assert (table.loc[("1", "0"), untrained] == "1.000").all()
    assert table.loc[("8", "0"), "idlg (untrained)"] == "skipped"  # a B=1 rule
    assert table.loc[("48", "0"), "ilrg (untrained)"] == "skipped"  # 48 distinct labels from 19 classes
    assert table.loc[("8", "1"), "ilrg (untrained)"] == "1.000"
    assert table.loc[("8", "1"), "yin (untrained)"] == "0.125"  # distinct labels by construction: 1 of 8 right
