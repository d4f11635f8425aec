"""The template-shaped fixture project (tests/template/) composes and trains as the template does."""

from __future__ import annotations

import pytest

from conftest import compose_template


def test_the_template_configs_compose_as_the_template_writes_them(template_project):
    cfg = compose_template(template_project)
    assert cfg.model.net._target_ == "src.models.components.simple_dense_net.SimpleDenseNet"
    assert cfg.model.optimizer._partial_ is True and cfg.model.scheduler._partial_ is True
    assert cfg.paths.root_dir == str(template_project)  # ${oc.env:PROJECT_ROOT}
    assert cfg.callbacks.model_checkpoint.dirpath == cfg.paths.output_dir + "/checkpoints"


@pytest.mark.slow
def test_the_template_project_trains_one_epoch_on_cpu(template_project):
    from src.train import train

    cfg = compose_template(template_project)
    metrics, objects = train(cfg)

    assert type(objects["model"]).__module__ == "src.models.digits_module"
    assert "test/acc" in metrics and "val/acc" in metrics
    best = objects["trainer"].checkpoint_callback.best_model_path
    assert best.startswith(str(template_project)) and best.endswith(".ckpt")
