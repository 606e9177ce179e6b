"""The fidelity sweep (bench.fidelity): a tiny cell in the normal suite, the whole sweep marked slow."""

import pytest

from bench import fidelity
from bench.data import load_dataset
from bench.sampler import sample_batch


def test_images_all_gives_each_image_its_first_seed():
    seeds = fidelity.seeds_covering_images("cifar100_sample")
    data = load_dataset("cifar100_sample")
    assert len(seeds) == len(data) == 20
    drawn = [int(sample_batch(data.labels, data.num_classes, 1, 0.0, s)[0]) for s in seeds]
    assert drawn == list(range(20))
    for image, seed in enumerate(seeds):  # the first such seed
        assert all(int(sample_batch(data.labels, data.num_classes, 1, 0.0, s)[0]) != image for s in range(seed))


def test_plan_covers_every_cell_deterministically():
    cells = fidelity.load_cells()
    planned = fidelity.plan(cells, list(cells["cells"]))
    assert {p.cell for p in planned} == set(cells["cells"])
    assert [fidelity.key_of(p.settings) for p in planned] == [
        fidelity.key_of(p.settings) for p in fidelity.plan(cells, list(cells["cells"]))
    ]
    assert len({fidelity.key_of(p.settings) for p in planned}) == len(planned)  # no two cells share a trial
    optional = {name for name, cell in cells["cells"].items() if cell.get("optional")}
    assert optional and {p.cell for p in fidelity.plan(cells)} == set(cells["cells"]) - optional  # by name only
    assert all(p.judge in fidelity.JUDGES for p in planned), "every cell is judged (by itself or by its judge:)"
    dlg = [p for p in planned if p.cell == "dlg"]
    assert len(dlg) == 40 and {p.settings["method"]["name"] for p in dlg} == {"dlg", "idlg"}
    variants = {p.variant for p in planned if p.cell == "gradinversion"}
    assert variants == {"full", "no_bn_prior", "no_group_consistency"}


def test_unknown_cell_is_a_one_line_error(capsys):
    assert fidelity.main(["--cells", "nope", "--report-only"]) == 2
    assert "unknown fidelity cell 'nope'" in capsys.readouterr().err


def test_tiny_dlg_cell_runs_resumes_and_states_its_claims(tmp_path):
    out = tmp_path / "fid"
    assert fidelity.main(["--cells", "dlg", "--scale", "tiny", "--out", str(out)]) == 0
    records = list((out / "records").glob("*.json"))
    assert len(records) == 4  # dlg and idlg on two images
    table = (out / "fidelity.md").read_text()
    assert "| idlg | extracts the label from the gradient on every image (100%)" in table
    assert "label accuracy 2/2 = 100%" in table  # iDLG's rule is exact, whatever the (tiny) budget
    assert "| dlg | reconstructs the image" in table
    planned = fidelity.plan(fidelity.load_cells(), ["dlg"], "tiny")
    lines: list[str] = []
    fidelity.run(out, planned, echo=lines.append, jobs=2)  # a second run reads every trial back
    assert all("(resumed)" in line for line in lines) and len(lines) == 4


@pytest.mark.slow
def test_full_fidelity_sweep(tmp_path):
    """The whole sweep (docs/fidelity.md): its claims are measured, and the ones our fixes target pass."""
    out = tmp_path / "fid"
    assert fidelity.main(["--out", str(out)]) == 0
    claims = fidelity.claims_of(out, fidelity.plan(fidelity.load_cells()))
    assert all(c.passed is not None for c in claims)
    by_claim = {(c.method, c.claim[:20]): c for c in claims}
    assert by_claim[("idlg", "extracts the label f")].passed
