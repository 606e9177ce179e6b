"""A method added from outside the package, in one file, runs through python -m bench.run."""

import json
import textwrap

PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass
    from typing import ClassVar

    import torch

    from methods import Reconstruction, register_method
    from methods.labels import infer_labels


    @register_method()
    @dataclass
    class MeanImage:
        """Guesses the data mean for every image: a floor that any real attack should beat."""

        name: ClassVar[str] = "mean_image"
        paper: ClassVar[str] = "none: a baseline"
        iterations: int = 1

        def reconstruct(self, observation, *, generator, callback=None, callback_every=0, progress=False):
            shape = (observation.batch_size, *observation.image_shape)
            images = torch.tensor(observation.mean, device=observation.device).view(1, -1, 1, 1).expand(shape)
            labels = infer_labels("count", observation)
            return Reconstruction(images=images.clone(), labels=labels)
    '''
)


def test_external_method_runs_through_the_cli(run_cli, tmp_path):
    plugin = tmp_path / "mean_image.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "plugin-run"
    done = run_cli(
        f"plugins=[{plugin}]",
        "method=external",
        "method.name=mean_image",
        "sweep=none",
        "batch_size=2",
        "dataset=cifar10_sample",
        "model=lenet",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["method"] == "mean_image"
    assert 5 < record["psnr"] < 30
