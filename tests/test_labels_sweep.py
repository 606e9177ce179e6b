"""sweep=labels end to end on a reduced grid: label recovery only, a table in CSV and Markdown, both compositions."""

import pandas as pd


def test_labels_sweep_writes_the_label_table(run_cli, tmp_path):
    out = tmp_path / "labels"
    done = run_cli(
        "sweep=labels",
        "seeds=1",
        "threads=1",
        # untrained only (the trained model's numbers are docs/labels.md's): the whole grid, without model.state
        "hydra.sweeper.params={label_strategy:'idlg,yin,ilrg,lrb',batch_size:'1,8,48',dup_ratio:'0,0.75',"
        "composition:'even,dirichlet',seed:'range(0,1)'}",
        "model.state=untrained",
        f"hydra.sweep.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "labels.csv", dtype=str).set_index(["composition", "B", "r"])
    assert (out / "labels.md").read_text().startswith("| composition | B | r |")
    assert set(table.index.get_level_values("composition")) == {"even", "dirichlet"}
    untrained = [c for c in table.columns if c.endswith("(untrained)")]
    assert len(untrained) == 4 and len(table.columns) == 4
    assert (table.loc[("even", "1", "0"), untrained] == "1.000").all()
    assert table.loc[("even", "8", "0"), "idlg (untrained)"] == "skipped"  # a B=1 rule
    assert table.loc[("even", "48", "0"), "ilrg (untrained)"] == "skipped"  # 48 distinct labels from 19 classes
    # B = 8, r = 0.75: three classes, {3, 3, 2} when even and {4, 3, 1} skewed (seed 0); yin names 8 distinct classes
    for composition in ("even", "dirichlet"):
        assert table.loc[(composition, "8", "0.75"), "yin (untrained)"] == "0.375"
        for cell in (("8", "0.75"), ("48", "0.75")):
            assert table.loc[(composition, *cell), "lrb (untrained)"] == "1.000", (composition, cell)
    # all-distinct batches have one composition only: the skewed rows repeat the even ones
    assert table.loc[("dirichlet", "8", "0")].equals(table.loc[("even", "8", "0")])
