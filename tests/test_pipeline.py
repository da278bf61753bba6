import logging

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.schedulers.scheduling_kgdiff import make_sampler

from .conftest import make_tiny_pipeline


def generate(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 8)
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs)


def test_outputs_in_data_units_with_shapes_and_types(tiny_pipeline):
    out = generate(tiny_pipeline, node_ids=["node1", "node4"], num_samples=3)
    assert isinstance(out.series, np.ndarray) and out.series.shape == (2, 3, 48, 1)
    assert out.node_ids == ["node1", "node4"] and out.meta_pattern.shape == (2, 48, 1)
    assert np.isfinite(out.series).all()
    # outputs come back through the stored stats: mean 50, std 10 on roughly unit-scale images
    assert 30 < out.series.mean() < 70 and out.series.std() > 3
    pt = generate(tiny_pipeline, node_ids=["node1", "node4"], num_samples=3, output_type="pt")
    assert isinstance(pt.series, torch.Tensor) and np.array_equal(pt.series.numpy(), out.series)
    frame = generate(tiny_pipeline, node_ids=["node1", "node4"], num_samples=3, output_type="pd").series
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2 * 3 * 48
    assert np.array_equal(frame["f0"].to_numpy(), out.series.reshape(-1))
    series, node_ids, meta = generate(tiny_pipeline, node_ids=["node1"], return_dict=False)
    assert series.shape == (1, 1, 48, 1) and node_ids == ["node1"]


def test_save_and_reload_generate_bit_identical_series(tiny_pipeline, tmp_path):
    before = generate(tiny_pipeline, node_ids=["node0", "node5"], num_samples=4).series
    tiny_pipeline.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "model_index.json" in files
    for component in ("unet", "condition_encoder", "meta_pattern"):
        assert f"{component}/diffusion_pytorch_model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.config.node_ids == tiny_pipeline.config.node_ids
    after = generate(reloaded, node_ids=["node0", "node5"], num_samples=4).series
    assert np.array_equal(before, after)


@pytest.mark.parametrize("output_min", [[0.0], [None]])
def test_a_clipped_pipeline_reloads_without_a_config_type_warning(tiny_pipeline, tmp_path, output_min):
    tiny_pipeline.register_to_config(output_min=output_min)
    tiny_pipeline.save_pretrained(tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = logging.getLogger("diffusers")  # does not propagate to the root logger
    library_logger.addHandler(handler)
    try:
        reloaded = KGDiffPipeline.from_pretrained(tmp_path, local_files_only=True)
    finally:
        library_logger.removeHandler(handler)
    assert reloaded.config.output_min == output_min
    assert not [r.getMessage() for r in records if "Expected types" in r.getMessage()]


def test_batching_over_nodes_does_not_change_results(tiny_pipeline):
    batched = generate(tiny_pipeline, node_ids=["node0", "node1", "node2"], num_samples=2, batch_size=256).series
    chunked = generate(tiny_pipeline, node_ids=["node0", "node1", "node2"], num_samples=2, batch_size=1).series
    np.testing.assert_allclose(batched, chunked, rtol=1e-4, atol=1e-3)


def test_generator_list_gives_each_day_its_own_stream(tiny_pipeline):
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    both = tiny_pipeline(node_ids=["node2"], num_samples=2, num_inference_steps=8, generator=gens).series
    alone = tiny_pipeline(
        node_ids=["node2"], num_samples=1, num_inference_steps=8, generator=[torch.Generator().manual_seed(8)]
    ).series
    np.testing.assert_allclose(both[0, 1], alone[0, 0], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="generators"):
        tiny_pipeline(node_ids=["node2"], num_samples=2, generator=[torch.Generator()])


def test_new_node_with_the_neighbours_of_a_known_node_gets_its_condition(tiny_pipeline):
    encoder = tiny_pipeline.condition_encoder
    mine = encoder.edge_node == 3
    neighbours = [
        (tiny_pipeline.config.relation_names[r], tiny_pipeline.config.entity_names[t])
        for r, t in zip(encoder.edge_relation[mine].tolist(), encoder.edge_neighbor[mine].tolist())
    ]
    known = tiny_pipeline.condition(["node3"])
    new = tiny_pipeline.condition(new_nodes={"planned": neighbours})
    torch.testing.assert_close(new, known)
    out = generate(tiny_pipeline, node_ids=["node3"], new_nodes={"planned": neighbours})
    assert out.node_ids == ["node3", "planned"] and out.series.shape == (2, 1, 48, 1)
    with pytest.raises(ValueError, match="entity 'Nowhere'"):
        generate(tiny_pipeline, new_nodes={"planned": [("R1", "Nowhere")]})


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "unipc"])
def test_fast_diffusers_samplers_plug_in(tiny_pipeline, sampler):
    tiny_pipeline.scheduler = make_sampler(sampler, tiny_pipeline.scheduler.config)
    out = generate(tiny_pipeline, node_ids=["node0"], num_samples=2, num_inference_steps=5)
    assert out.series.shape == (1, 2, 48, 1) and np.isfinite(out.series).all()


def test_bad_requests_raise_clear_errors(tiny_pipeline):
    with pytest.raises(ValueError, match=r"unknown node ids \['nope'\]"):
        generate(tiny_pipeline, node_ids=["node1", "nope"])
    with pytest.raises(ValueError, match="num_samples"):
        generate(tiny_pipeline, node_ids=["node1"], num_samples=0)
    with pytest.raises(TypeError, match="node ids must be str or int"):
        generate(tiny_pipeline, node_ids=[1.5])
    with pytest.raises(TypeError, match="list of node ids"):
        generate(tiny_pipeline, node_ids="node1")
    with pytest.raises(ValueError, match="output_type"):
        generate(tiny_pipeline, node_ids=["node1"], output_type="pil")
    with pytest.raises(ValueError, match="num_inference_steps"):
        generate(tiny_pipeline, node_ids=["node1"], num_inference_steps=500)


def test_mismatched_components_are_rejected():
    pipe = make_tiny_pipeline()
    with pytest.raises(ValueError, match="node_ids"):
        KGDiffPipeline(
            unet=pipe.unet, condition_encoder=pipe.condition_encoder, scheduler=pipe.scheduler, node_ids=["a", "b"]
        )
    with pytest.raises(ValueError, match="sample_size"):
        KGDiffPipeline(
            unet=pipe.unet,
            condition_encoder=pipe.condition_encoder,
            scheduler=pipe.scheduler,
            seq_len=288,
            delay_window=32,
            delay_stride=9,
        )


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_sample_prediction_reaches_the_predicted_day_with_every_sampler(sampler):
    """With prediction_type="sample" the denoiser predicts X_0; fast samplers step on Y = X - f, so the
    pipeline must hand them Y_0 = X_0 - f. An oracle denoiser that always predicts one day must give it."""
    pipe = make_tiny_pipeline()
    pipe.scheduler = make_sampler(sampler, {**pipe.scheduler.config, "prediction_type": "sample"})
    target_series = torch.randn(1, 1, 48, generator=torch.Generator().manual_seed(5))
    target_image = pipe.delay_embedding.to_image(target_series)
    pipe._predict_noise = lambda sample, t, condition, meta_image: target_image.expand_as(sample)
    out = generate(pipe, node_ids=["node2"], num_samples=2, num_inference_steps=10)
    expected = (target_series[0, 0] * 10.0 + 50.0).numpy()  # the tiny pipeline's mean 50, std 10
    np.testing.assert_allclose(out.series[0, :, :, 0], np.stack([expected, expected]), atol=1e-3)


def test_from_pretrained_refuses_non_finite_weights_naming_the_component(tiny_pipeline, tmp_path):
    with torch.no_grad():
        next(tiny_pipeline.meta_pattern.parameters())[0] = float("nan")
    tiny_pipeline.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"non-finite \(NaN/inf\) weights in meta_pattern \(1 of"):
        KGDiffPipeline.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"generator": 0}, "generator must be a torch.Generator.*got int"),
        ({"generator": np.random.default_rng(0)}, "generator must be a torch.Generator.*got Generator"),
        ({"generator": [torch.Generator(), 3]}, "got int"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": -4}, "batch_size must be an int >= 1, got -4"),
        ({"num_samples": True}, "num_samples must be an int >= 1, got True"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be an int in \[1, 50\]"),
        ({"num_inference_steps": 2.5}, r"num_inference_steps must be an int in \[1, 50\]"),
        ({"num_inference_steps": 51}, r"num_inference_steps must be an int in \[1, 50\]"),
    ],
)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++", "unipc"])
def test_bad_arguments_raise_value_errors(tiny_pipeline, sampler, kwargs, message):
    tiny_pipeline.scheduler = make_sampler(sampler, tiny_pipeline.scheduler.config)
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(node_ids=["node1"], **kwargs)


def test_a_new_node_cannot_take_the_id_of_a_known_node(tiny_pipeline):
    with pytest.raises(ValueError, match=r"new_nodes \['node2'\] have the ids of nodes the pipeline knows"):
        tiny_pipeline(new_nodes={"node2": [("R1", "E30")]}, num_inference_steps=2)


def test_new_nodes_that_are_not_a_mapping_are_refused(tiny_pipeline):
    with pytest.raises(TypeError, match=r"new_nodes must map new node ids to \[\(relation, entity\), ...\], got list"):
        tiny_pipeline(new_nodes=[("p", [("R1", "E30")])], num_inference_steps=2)


def test_many_samples_stream_in_batch_size_chunks_with_results_independent_of_batch_size(tiny_pipeline):
    """Denoiser calls see at most batch_size days, and one generator gives the same days for any batch_size."""
    sizes = []
    predict = tiny_pipeline._predict_noise
    tiny_pipeline._predict_noise = lambda sample, *args: sizes.append(len(sample)) or predict(sample, *args)
    small = generate(tiny_pipeline, node_ids=["node0", "node3"], num_samples=5, num_inference_steps=3, batch_size=4)
    assert max(sizes) == 4 and len(sizes) == 3 * 3  # 10 days in chunks of 4, 4, 2; 3 steps each
    large = generate(tiny_pipeline, node_ids=["node0", "node3"], num_samples=5, num_inference_steps=3)
    np.testing.assert_allclose(small.series, large.series, rtol=1e-5, atol=1e-4)
    assert small.series.shape == (2, 5, 48, 1) and len(np.unique(small.series[:, :, 0, 0])) == 10


def test_pickled_weights_only_are_refused_on_load(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="no file named diffusion_pytorch_model.safetensors.*no pickle"):
        KGDiffPipeline.from_pretrained(tmp_path)
    reloaded = KGDiffPipeline.from_pretrained(tmp_path, use_safetensors=False)  # explicitly allowed
    assert reloaded.config.node_ids == tiny_pipeline.config.node_ids


def edit_json(path, **changes):
    import json

    config = json.loads(path.read_text())
    config.update({key: change(config[key]) for key, change in changes.items()})
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("file", "changes"),
    [
        ("scheduler/scheduler_config.json", {"prediction_type": lambda _: "sample"}),
        ("scheduler/scheduler_config.json", {"num_train_timesteps": lambda _: 1000}),
        ("model_index.json", {"node_ids": lambda ids: ids[::-1]}),
        ("model_index.json", {"feature_mean": lambda mean: [m + 1 for m in mean]}),
        ("unet/config.json", {"condition_dim": lambda _: 16}),  # the same value: not an edit
    ],
)
def test_edited_configs_that_change_results_fail_to_load(tiny_pipeline, tmp_path, file, changes):
    tiny_pipeline.save_pretrained(tmp_path)
    edit_json(tmp_path / file, **changes)
    if file == "unet/config.json":
        KGDiffPipeline.from_pretrained(tmp_path)
        return
    with pytest.raises(ValueError, match=f"{file} changed after save_pretrained"):
        KGDiffPipeline.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "changes",
    [{"condition_dim": lambda _: float("nan")}, {"norm_num_groups": lambda _: 0}, {"num_features": lambda _: "1"}],
)
def test_an_edit_that_breaks_a_component_is_named_not_a_traceback(tiny_pipeline, tmp_path, changes):
    tiny_pipeline.save_pretrained(tmp_path)
    assert KGDiffPipeline._edited_config_files(tmp_path) == []
    edit_json(tmp_path / "unet/config.json", **changes)
    with pytest.raises(ValueError, match="unet/config.json changed after save_pretrained"):
        KGDiffPipeline.from_pretrained(tmp_path)
    index = tmp_path / "model_index.json"
    edit_json(index, config_sha256=lambda _: None)  # saved before digests: the component's own error stands
    with pytest.raises((TypeError, ValueError, ZeroDivisionError)) as raised:
        KGDiffPipeline.from_pretrained(tmp_path)
    assert "changed after save_pretrained" not in str(raised.value)


def test_a_sampler_changed_in_python_and_saved_again_loads(tiny_pipeline, tmp_path):
    tiny_pipeline.scheduler = make_sampler("ddim", tiny_pipeline.scheduler.config)
    tiny_pipeline.save_pretrained(tmp_path)
    assert type(KGDiffPipeline.from_pretrained(tmp_path).scheduler).__name__ == "DDIMScheduler"


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++", "unipc"])
def test_every_sampler_runs_the_full_chain(tiny_pipeline, sampler):
    """DPM-Solver++ failed with an IndexError and UniPC with an AssertionError at num_train_timesteps steps."""
    tiny_pipeline.scheduler = make_sampler(sampler, tiny_pipeline.scheduler.config)
    assert np.isfinite(generate(tiny_pipeline, node_ids=["node0"], num_inference_steps=50).series).all()


def test_a_ddim_chain_that_starts_below_the_top_starts_from_that_step_s_noise(tiny_pipeline):
    """DDIM's leading spacing starts 40 of 50 steps at t = 39: pure noise there has the std of step 39."""
    tiny_pipeline.scheduler = make_sampler("ddim", tiny_pipeline.scheduler.config)
    starts = []
    predict = tiny_pipeline._predict_noise
    tiny_pipeline._predict_noise = lambda sample, *args: starts.append(sample.clone()) or predict(sample, *args)
    generate(tiny_pipeline, node_ids=["node0"], num_samples=64, num_inference_steps=40)
    abar = tiny_pipeline.scheduler.alphas_cumprod
    assert int(tiny_pipeline.scheduler.timesteps[0]) == 39
    noise = starts[0] - starts[0].mean(dim=0)  # the same node's 64 days share the drift towards f
    torch.testing.assert_close(noise.std(), (1 - abar[39]).sqrt(), rtol=0.03, atol=0.0)
    for steps in (25, 50):  # chains that start at the top keep diffusers' unit-std start
        tiny_pipeline.scheduler.set_timesteps(steps)
        assert tiny_pipeline._start_noise_scale() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node_ids": ["node1", "node1"]}, r"node_ids \['node1'\] are given more than once"),
        ({"new_nodes": {"p": [("R1", "E3", "x")]}}, r"new node 'p': give a list of \(relation, entity\) pairs"),
        ({"new_nodes": {"p": ("R1", "E3")}}, r"new node 'p': give a list of \(relation, entity\) pairs, not 'R1'"),
        ({"new_node_locations": {"typo": (1.0, 1.0)}}, r"new_node_locations names \['typo'\], which are not in"),
        ({"new_nodes": {"p": [("R1", "E3")]}, "new_node_locations": {"p": (float("nan"), -121.0)}}, "two finite"),
        ({"new_nodes": {"p": [("R1", "E3")]}, "new_node_locations": {"p": (37.4, float("inf"))}}, "two finite"),
        ({"new_nodes": {"p": [("R1", "E3")]}, "new_node_locations": {"p": (37.4, -121.0, 5.0)}}, "two finite"),
        ({"new_nodes": {"p": [("R1", "E3")]}, "new_node_locations": {"p": "37.4,-121.0"}}, "two finite"),
        ({"new_nodes": {"p": [("R1", "E3")]}, "new_node_locations": {"p": (95.0, 10.0)}}, "two finite"),
    ],
)
def test_ambiguous_or_malformed_places_raise_clear_errors(tiny_pipeline, kwargs, message):
    kwargs = {"node_ids": ["node0"], **kwargs} if "new_nodes" not in kwargs else kwargs
    with pytest.raises(ValueError, match=message):
        generate(tiny_pipeline, num_inference_steps=2, **kwargs)


def test_new_node_ids_come_back_as_strings(tiny_pipeline):
    assert generate(tiny_pipeline, new_nodes={5: [("R1", "E3")]}, num_inference_steps=2).node_ids == ["5"]


@pytest.mark.parametrize(
    "changes",
    [{"feature_std": [float("nan")]}, {"feature_mean": [float("inf")]}, {"output_min": [float("nan")]}],
)
def test_non_finite_statistics_are_refused(tiny_pipeline, changes):
    components = tiny_pipeline.components
    config = {k: v for k, v in tiny_pipeline.config.items() if not k.startswith("_") and k not in components}
    with pytest.raises(ValueError, match="finite"):
        KGDiffPipeline(**tiny_pipeline.components, **{**config, **changes})


def test_a_component_passed_to_from_pretrained_replaces_the_saved_one(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    ddim = make_sampler("ddim", tiny_pipeline.scheduler.config)
    assert KGDiffPipeline.from_pretrained(tmp_path, scheduler=ddim).scheduler is ddim
    edit_json(tmp_path / "unet/config.json", norm_num_groups=lambda _: 4)  # an edit elsewhere is still caught
    with pytest.raises(ValueError, match="unet/config.json changed after save_pretrained"):
        KGDiffPipeline.from_pretrained(tmp_path, scheduler=ddim)


def test_a_missing_component_folder_is_named(tiny_pipeline, tmp_path):
    import shutil

    held_out = {"validation_node_ids": ["node1", "node2"]}
    # config lists of two strings are not component entries
    KGDiffPipeline(**tiny_pipeline.components, **{**_own_config(tiny_pipeline), **held_out}).save_pretrained(tmp_path)
    assert KGDiffPipeline.from_pretrained(tmp_path).config.validation_node_ids == ["node1", "node2"]
    shutil.rmtree(tmp_path / "meta_pattern")
    with pytest.raises(FileNotFoundError, match=r"component folder\(s\) \['meta_pattern'\] listed in model_index.json"):
        KGDiffPipeline.from_pretrained(tmp_path)


def test_a_half_precision_load_is_refused_with_a_reason(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="runs in float32"):
        KGDiffPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert KGDiffPipeline.from_pretrained(tmp_path, torch_dtype=torch.float32).unet.dtype == torch.float32


def test_a_corrupt_weights_file_is_named_corrupt_not_missing(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match="corrupt or truncated") as error:
        KGDiffPipeline.from_pretrained(tmp_path)
    assert not isinstance(error.value, FileNotFoundError) and "pickle" not in str(error.value)


def test_a_weights_file_of_another_shape_names_its_component(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    weights = tmp_path / "meta_pattern" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    expected = list(tensors[key].shape)
    tensors[key] = torch.zeros(expected[0] + 1, *expected[1:])
    save_file(tensors, weights)
    with pytest.raises(ValueError) as error:
        KGDiffPipeline.from_pretrained(tmp_path)
    message = str(error.value)
    assert f"meta_pattern/diffusion_pytorch_model.safetensors does not fit its config ({key} has shape" in message
    assert f"in the file, {expected} in the model" in message and "do not pass ignore_mismatched_sizes" in message


def _own_config(pipe) -> dict:
    return {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in pipe.components}
