"""evaluate.py / generate.py refuse a --data folder that is not the one the pipeline was trained on."""

import json
import logging
import shutil

import pytest

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.fingerprint import data_fingerprint
from kgdiff_diffusers.kg.tucker import pretrain_tucker

from .test_evaluation import build_tiny_folders, load_script
from .test_generate_script import generate_args


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny city, its pipeline with a fingerprint, the same city with another test split, another city."""
    root = tmp_path_factory.mktemp("fingerprint")
    dataset, data_dir, model_dir = build_tiny_folders(root)
    pipe = KGDiffPipeline.from_pretrained(model_dir)
    pipe.register_to_config(data_fingerprint=data_fingerprint(dataset.node_table, dataset.kg, dataset.name))
    pipe.save_pretrained(root / "fingerprinted")
    # the same nodes and KG, one more test node: a training node would count as "unseen"
    resplit = dataset.with_split([*dataset.test_node_ids, dataset.train_node_ids[0]])
    resplit.save(root / "resplit")
    data, kg = make_synthetic_city(num_nodes=16, num_days=10, seed=1)  # another city with the same node ids
    tucker = pretrain_tucker(kg, embedding_dim=16, epochs=1, show_progress=False)
    other = prepare_dataset(data, kg, "other_city", entity_embeddings=tucker.entity_embeddings,
                            relation_embeddings=tucker.relation_embeddings)
    assert other.node_ids == dataset.node_ids
    other.save(root / "other_city")
    return dataset, data_dir, root


def evaluate_args(root, data, *extra):
    return ["--model", str(root / "fingerprinted"), "--data", str(data), "--output_dir", str(root / "eval"),
            "--num_inference_steps", "2", "--max_days_per_node", "1", "--overwrite", *extra]


@pytest.mark.parametrize(("data", "differ"), [("resplit", "test_node_ids"), ("other_city", ".*kg")])
def test_evaluate_refuses_other_data_unless_told(folders, data, differ, caplog):
    _, _, root = folders
    evaluate = load_script("evaluate")
    with pytest.raises(ValueError, match=f"is not the data the pipeline was trained on: its {differ} differ"):
        evaluate.main(evaluate_args(root, root / data))
    if data == "resplit":
        with caplog.at_level(logging.WARNING):
            evaluate.main(evaluate_args(root, root / data, "--ignore_data_fingerprint"))
        assert "going on because of --ignore_data_fingerprint" in caplog.text
        # "fingerprinted" has no training_config.json: the baselines' donors may include its validation nodes
        assert "validation nodes of the training run are unknown" in caplog.text
        metrics = json.loads((root / "eval" / "metrics.json").read_text())
        assert len(metrics["notes"]) == 1 and "validation nodes of the training run are unknown" in metrics["notes"][0]
        assert f"**Note:** {metrics['notes'][0]}" in (root / "eval" / "report.md").read_text()


def test_evaluate_names_other_data_before_it_clashes_with_the_training_split(folders, tmp_path):
    dataset, _, root = folders
    model = tmp_path / "model"
    shutil.copytree(root / "fingerprinted", model)
    clashing = dataset.train_node_ids[0]  # a validation node of the run, a test node of "resplit"
    (model / "training_config.json").write_text(json.dumps({"validation_node_ids": [clashing]}))
    evaluate = load_script("evaluate")
    args = ["--model", str(model), "--data", str(root / "resplit"), "--output_dir", str(tmp_path / "eval")]
    with pytest.raises(ValueError, match="is not the data the pipeline was trained on: its test_node_ids differ"):
        evaluate.main(args)
    with pytest.raises(ValueError, match=rf"\['{clashing}'\] are test nodes of dataset .*data and the model differ"):
        evaluate.main([*args, "--ignore_data_fingerprint"])
    assert not (tmp_path / "eval").exists()


def test_generate_refuses_another_city_for_new_places(folders):
    dataset, data_dir, root = folders
    generate = load_script("generate")
    pipe = KGDiffPipeline.from_pretrained(root / "fingerprinted")
    args = generate.parse_args(generate_args(dataset, root / "other_city", root / "fingerprinted", "x.csv")[1:])
    with pytest.raises(ValueError, match="its .*kg differ"):
        generate.new_node_conditions(args, pipe)
    args = generate.parse_args(generate_args(dataset, data_dir, root / "fingerprinted", "x.csv")[1:])
    assert generate.new_node_conditions(args, pipe)["planned"]  # its own data passes
