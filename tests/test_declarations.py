"""Each model family and dataset is declared once (FAMILIES in its model file, DATASETS in its data file, its YAML in
conf/); everything else derives from those. These tests hold conf/ and the code to the same list."""

from __future__ import annotations

from importlib.resources import files

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dlcli.commands.cli import group_options, train_help
from dlcli.config.check import check_fit, datasets_for
from dlcli.config.listing import dataset_shapes
from dlcli.data import builders
from dlcli.models import families

CONF = files("dlcli.conf")


def yaml_names(folder: str) -> dict[str, str]:
    """file stem -> the `name:` it declares"""
    return {f.name[:-5]: str(OmegaConf.create(f.read_text()).name)
            for f in CONF.joinpath(folder).iterdir() if f.name.endswith(".yaml")}


def test_every_model_yaml_has_its_family_and_every_family_its_yaml_and_default_dataset():
    models = yaml_names("model")
    assert all(stem == name for stem, name in models.items()), models
    assert set(models) == set(families())
    autos = {f.name[:-5] for f in CONF.joinpath("dataset", "auto").iterdir() if f.name.endswith(".yaml")}
    assert autos == set(families())
    for name, family in families().items():
        assert family.about and family.fits, name


def test_every_dataset_yaml_has_its_builder_and_a_shape_some_model_fits():
    datasets = yaml_names("dataset")
    assert all(stem == name for stem, name in datasets.items()), datasets
    assert set(datasets) == set(builders())
    fitted = {d for m in families() for d in datasets_for(m)}
    assert fitted == set(dataset_shapes()), set(dataset_shapes()) - fitted


@pytest.mark.parametrize("model", sorted(families()))
def test_each_models_default_dataset_fits_it(model):
    with initialize_config_module(config_module="dlcli.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}"])
    check_fit(model, cfg.dataset)  # raises if the default does not fit
    assert cfg.dataset.name in datasets_for(model)


def test_help_and_completion_list_what_conf_holds():
    options = group_options()
    assert options["model"] == sorted(families()) and options["dataset"] == sorted(builders())
    for name in (*families(), *builders()):
        assert f" {name}" in train_help() or f"({name}" in train_help()
