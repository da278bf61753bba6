"""scripts/generate.py: known nodes and new places by coordinates, one process and two (accelerate launch)."""

import shutil

import numpy as np
import pandas as pd
import pytest
from accelerate.state import AcceleratorState

from .test_evaluation import build_tiny_folders, load_script, run_script

NUM_SAMPLES, STEPS = 3, 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_folders(tmp_path_factory.mktemp("tiny_generate"))


@pytest.fixture(scope="module")
def generate():
    return load_script("generate")


def generate_args(dataset, data_dir, model_dir, output) -> list[str]:
    """Two known nodes and one planned sensor 300 m north of the first one."""
    known = dataset.node_ids[:2]
    lat, lon = dataset.node_table.loc[0, ["lat", "lon"]]
    return [
        "scripts/generate.py", "--model", str(model_dir), "--node_ids", ",".join(known),
        "--new_node", f"planned:{lat + 0.0027},{lon}", "--poi", "school_x:school", "--data", str(data_dir),
        "--num_samples", str(NUM_SAMPLES), "--num_inference_steps", "3", "--date", "2024-03-04",
        "--output", str(output),
    ]


@pytest.fixture
def fresh_accelerate_state():
    """Forgets the in-process Accelerator state that ``generate.main`` creates (a process-wide singleton)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_generate_known_and_new_nodes_one_and_two_processes(tiny, generate, fresh_accelerate_state, tmp_path):
    dataset, data_dir, model_dir = tiny
    csv_path, npz_path = tmp_path / "days.csv", tmp_path / "two" / "days.npz"  # each writes its own days.png
    generate.main(generate_args(dataset, data_dir, model_dir, csv_path)[1:])  # one process, in this one
    frame = pd.read_csv(csv_path, dtype={"node_id": str}, parse_dates=["timestamp"])
    node_ids = [*dataset.node_ids[:2], "planned"]
    assert frame.columns.tolist() == ["node_id", "sample", "timestamp", "flow"]
    assert len(frame) == len(node_ids) * NUM_SAMPLES * STEPS
    assert frame["node_id"].unique().tolist() == node_ids
    day = pd.date_range("2024-03-04", periods=STEPS, freq="30min")
    for (_, sample), rows in frame.groupby(["node_id", "sample"], sort=False):
        assert sample in range(NUM_SAMPLES)
        assert rows["timestamp"].tolist() == day.tolist()
    assert np.isfinite(frame["flow"]).all()
    assert (tmp_path / "days.png").read_bytes().startswith(b"\x89PNG")

    # two processes share the nodes (2 + 1) and give the same days: the noise is seeded per (node, sample)
    launch = ["-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu"]
    double = run_script(*launch, *generate_args(dataset, data_dir, model_dir, npz_path))
    assert double.returncode == 0, double.stderr[-3000:]
    with np.load(npz_path) as npz:
        assert npz["node_ids"].tolist() == node_ids
        assert npz["timestamps"][[0, -1]].tolist() == ["2024-03-04T00:00:00", "2024-03-04T23:30:00"]
        series = npz["series"]
    assert series.shape == (3, NUM_SAMPLES, STEPS, 1)
    np.testing.assert_allclose(series.reshape(-1), frame["flow"].to_numpy(), rtol=1e-6)


def test_new_place_is_linked_to_its_nearest_sensor(tiny, generate):
    dataset, data_dir, model_dir = tiny
    from kgdiff_diffusers import KGDiffPipeline

    pipe = KGDiffPipeline.from_pretrained(model_dir)
    args = generate.parse_args(generate_args(dataset, data_dir, model_dir, "unused.csv")[1:])
    assert args.new_nodes[0]["pois"] == [("school_x", "school")]
    conditions = generate.new_node_conditions(args, pipe)
    pairs = conditions["planned"]
    nearest = dataset.node_table.loc[0, "entity"]
    assert ("SNS_1km", nearest) in pairs and ("SNS_1km_inv", nearest) in pairs
    assert all(relation in pipe.config.relation_names and entity in pipe.config.entity_names
               for relation, entity in pairs)
    far = {"name": "far_away", "lat": args.new_nodes[0]["lat"] + 1.0, "lon": args.new_nodes[0]["lon"], "pois": []}
    args.new_nodes = [far]  # ~110 km north: a new grid cell, and a distance band training never saw
    with pytest.raises(ValueError, match=r"--new_node far_away: none of its \d+ KG links .* place it nearer"):
        generate.new_node_conditions(args, pipe)
    with pytest.raises(ValueError, match="already a node id"):
        args.new_nodes[0]["name"] = dataset.node_ids[3]
        generate.new_node_conditions(args, pipe)


def test_generate_rejects_unknown_ids_and_bad_arguments(tiny, generate, tmp_path):
    _, data_dir, model_dir = tiny
    output = str(tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"unknown node ids \['nowhere'\]"):
        generate.main(["--model", str(model_dir), "--node_ids", "00,nowhere", "--output", output])
    for bad in (
        ["--new_node", "p:37.5,-121.0"],  # no --data
        ["--poi", "a:school", "--new_node", "p:37.5,-121.0", "--data", str(data_dir)],  # POI before its node
        ["--new_node", "p:37.5", "--data", str(data_dir)],  # no longitude
        ["--node_ids", "00", "--output", str(tmp_path / "x.txt")],  # unknown format
        ["--node_ids", "00", "--data", str(tmp_path / "missing")],  # a --data that is not there, even if unused
    ):
        with pytest.raises(SystemExit):
            generate.parse_args(["--model", str(model_dir), "--output", output, *bad])


def test_a_node_table_without_a_column_is_named(tiny, generate, tmp_path):
    _, data_dir, _ = tiny
    for column in ("split", "entity"):
        copy = tmp_path / column
        shutil.copytree(data_dir, copy)
        table = pd.read_csv(copy / "nodes.csv", dtype=str)
        table.drop(columns=[column]).to_csv(copy / "nodes.csv", index=False)
        with pytest.raises(ValueError, match=rf"--data {copy}: nodes.csv lacks the column\(s\) \['{column}'\]"):
            generate.load_places(copy)


class NotLoaded:
    """Stands in for ``KGDiffPipeline``: these checks must fail before the pipeline is loaded, let alone sampled."""

    @staticmethod
    def from_pretrained(*args, **kwargs):
        raise AssertionError("generate.py loaded the pipeline before checking its outputs")


def test_generate_checks_every_output_before_sampling(tiny, generate, tmp_path, monkeypatch):
    _, _, model_dir = tiny
    monkeypatch.setattr(generate, "KGDiffPipeline", NotLoaded)

    def run(output, *extra):
        generate.main(["--model", str(model_dir), "--node_ids", "00", "--output", str(output), *extra])

    plot = tmp_path / "days.png"
    plot.write_bytes(b"an earlier plot")
    with pytest.raises(FileExistsError, match=r"days\.png \(the plot written next to --output\) exists.*--overwrite"):
        run(tmp_path / "days.npz")
    assert plot.read_bytes() == b"an earlier plot" and not (tmp_path / "days.npz").exists()
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.csv is a folder"):
        run(tmp_path / "folder.csv", "--overwrite")
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path / "afile" / "x.csv", tmp_path / "afile" / "sub" / "x.csv"):
        with pytest.raises(NotADirectoryError, match="afile is a file, not a folder"):
            run(output)


def test_generate_names_the_flag_of_a_bad_argument(tiny, generate, capsys):
    _, data_dir, model_dir = tiny
    base = ["--model", str(model_dir), "--output", "x.csv"]
    for bad, message in (
        (["--node_ids", "00", "--seed", "-1"], "--seed must be >= 0; got -1"),
        (["--new_node", "p1:37.5,-121.0", "--new_node", "p1:37.6,-121.0", "--data", str(data_dir)],
         "--new_node p1 is given twice"),
    ):
        with pytest.raises(SystemExit):
            generate.parse_args([*base, *bad])
        assert message in capsys.readouterr().err
