"""LRB against the other label strategies on skewed batches of a trained model (docs/labels.md), through sweep=labels.

Slow (144 label trials, three trained models; 5.5 min on 2 shared cores with the models cached):
`pytest -m slow tests/test_labels_skewed.py`.
"""

import pandas as pd
import pytest

from bench.sampler import distinct_labels


@pytest.mark.slow
def test_lrb_is_at_least_the_best_other_strategy_on_skewed_batches_of_a_trained_model(run_cli, tmp_path):
    out = tmp_path / "skewed"
    done = run_cli(
        "sweep=labels",
        "seeds=3",
        "threads=1",
        "hydra.sweeper.params={label_strategy:'analytic,yin,llg,count,ilrg,lrb',batch_size:'8,16,32,48',"
        "dup_ratio:'0.5,0.75',composition:dirichlet,seed:'range(0,3)'}",
        "model.state=trained",
        f"hydra.sweep.dir={out}",
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr
    trials = pd.read_csv(out / "trials.csv")
    ok = trials[trials.status == "ok"]
    skewed = ok[[1 < distinct_labels(b, r) < b for b, r in zip(ok.batch_size, ok.dup_ratio, strict=True)]]
    accuracy = skewed.groupby("method").label_accuracy.mean()
    assert len(skewed) == 7 * 3 * 6  # 7 feasible (B, r) cells (B = 48, r = 0.5 needs 24 classes) x 3 seeds x 6
    best_other = accuracy.drop("lrb").max()
    assert accuracy["lrb"] >= best_other, accuracy.to_dict()
