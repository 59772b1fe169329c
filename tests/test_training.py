"""Triplet-loss fine-tuning (services/embedder/training): mining, sampling, loss, a short run
on a few identities of the test photos, resuming from a checkpoint, and the export served by
Triton as a new model version."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import build_parser
from services.embedder.models import DEFAULT_MODEL
from services.embedder.training.augmentation import NONE, Augmentation
from services.embedder.training.data import FaceCrops, load_crops, split_by_identity
from services.embedder.training.evaluate import measure
from services.embedder.training.loop import TrainConfig, Training, TrainingError, checkpoints, freeze
from services.embedder.training.loss import pairwise_distances, triplet_loss
from services.embedder.training.mining import batch_hard, semi_hard_with_mask
from services.embedder.training.sampling import PKSampler
from tests.conftest import DATA, new_triton_server

torch.set_num_threads(2)

# Five items: identity 0 (items 0, 1, 2) and identity 1 (items 3, 4); symmetric distances.
DISTANCES = torch.tensor(
    [
        [0.0, 0.2, 0.6, 0.5, 0.9],
        [0.2, 0.0, 0.3, 0.8, 0.3],
        [0.6, 0.3, 0.0, 0.7, 0.25],
        [0.5, 0.8, 0.7, 0.0, 0.1],
        [0.9, 0.3, 0.25, 0.1, 0.0],
    ]
)
LABELS = torch.tensor([0, 0, 0, 1, 1])


def as_lists(*tensors: torch.Tensor) -> list[list]:
    return [t.tolist() for t in tensors]


# --- mining, loss, sampling, augmentation (pure functions) ---------------------------------------


def test_batch_hard_takes_the_farthest_positive_and_the_closest_negative() -> None:
    anchors, positives, negatives = batch_hard(DISTANCES, LABELS)
    assert as_lists(anchors, positives, negatives) == [[0, 1, 2, 3, 4], [2, 2, 0, 4, 3], [3, 4, 4, 0, 2]]


def test_batch_hard_skips_anchors_without_a_positive_or_a_negative() -> None:
    distances = torch.tensor([[0.0, 0.4, 0.2], [0.4, 0.0, 0.9], [0.2, 0.9, 0.0]])
    anchors, positives, negatives = batch_hard(distances, torch.tensor([0, 0, 1]))
    assert as_lists(anchors, positives, negatives) == [[0, 1], [1, 0], [2, 2]]  # item 2 is only a negative
    assert all(len(t) == 0 for t in batch_hard(distances, torch.tensor([5, 5, 5])))


def test_semi_hard_takes_the_closest_negative_within_the_margin_beyond_the_positive() -> None:
    anchors, positives, negatives, semi = semi_hard_with_mask(DISTANCES, LABELS, margin=0.25)
    # Every anchor-positive pair, in order. (1, 0): d_ap 0.2, item 4 at 0.3 is in (0.2, 0.45).
    # (2, 0): d_ap 0.6, item 3 at 0.7 is semi-hard although item 4 (0.25) is closer: 3, not 4.
    # (4, 3): d_ap 0.1, items 1 (0.3) and 2 (0.25) are in (0.1, 0.35): the closer one, 2.
    # The others have none and fall back to their anchor's closest negative, e.g. (1, 2):
    # d_ap 0.3 and item 4 at exactly 0.3 is not farther than the positive.
    assert as_lists(anchors, positives) == [[0, 0, 1, 1, 2, 2, 3, 4], [1, 2, 0, 2, 0, 1, 4, 3]]
    assert negatives.tolist() == [3, 3, 4, 4, 3, 4, 0, 2]
    assert semi.tolist() == [False, False, True, False, True, False, False, True]


def test_triplet_loss_on_unit_vectors() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])  # the last is normalised first
    distances = pairwise_distances(embeddings)
    assert distances[0, 1].item() == pytest.approx(np.sqrt(0.8), abs=1e-5)
    assert distances[0, 2].item() == pytest.approx(np.sqrt(2.0), abs=1e-5)
    loss, active = triplet_loss(distances, torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([2, 1]), 0.2)
    # (0, 1, 2): 0.894 - 1.414 + 0.2 < 0 gives 0; (0, 2, 1): 1.414 - 0.894 + 0.2 = 0.720.
    assert loss.item() == pytest.approx((np.sqrt(2.0) - np.sqrt(0.8) + 0.2) / 2, abs=1e-5)
    assert active == 0.5


def test_pk_sampler_draws_p_identities_of_k_photos() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # identity 3 has one photo: never drawn
    sampler = PKSampler(labels, p=3, k=3, seed=7)
    for step in range(20):
        batch = sampler.batch(step)
        groups = [[labels[i] for i in batch[g * 3 : g * 3 + 3]] for g in range(3)]
        assert all(len(set(group)) == 1 for group in groups), groups
        assert sorted(group[0] for group in groups) == [0, 1, 2]
        for group, items in zip(groups, (batch[g * 3 : g * 3 + 3] for g in range(3))):
            if group[0] != 1:  # enough photos: no photo twice
                assert len(set(items.tolist())) == 3
            else:  # two photos: both, and one again
                assert set(items.tolist()) == {3, 4}
    again = PKSampler(labels, p=3, k=3, seed=7)
    assert all((again.batch(s) == sampler.batch(s)).all() for s in range(5))
    assert any((PKSampler(labels, 3, 3, seed=8).batch(s) != sampler.batch(s)).any() for s in range(5))
    with pytest.raises(ValueError, match="fewer than p=4"):
        PKSampler(labels, p=4, k=2)


def test_augmentation_is_reproducible_and_none_changes_nothing() -> None:
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    assert torch.equal(NONE(crops, torch.Generator().manual_seed(1)), crops.float())
    augment = Augmentation(jitter=3)
    first = augment(crops, torch.Generator().manual_seed(1))
    assert torch.equal(first, augment(crops, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, crops.float()) and first.shape == (4, 32, 32, 3)
    assert first.min() >= 0 and first.max() <= 255


def test_train_verb_parses() -> None:
    argv = ["train", "labels.json", "--steps", "5", "--mining", "semi-hard", "--margin", "0.3"]
    args = build_parser().parse_args([*argv, "--p", "4", "--k", "2", "--out", "run", "--resume"])
    assert (args.steps, args.mining, args.margin, args.p, args.k, args.resume) == (5, "semi-hard", 0.3, 4, 2, True)
    assert args.handler.__module__ == "cli.train"


# --- a short run on a few identities of the test photos -----------------------------------------

SET = "face_api_js"  # eight identities, three photos each
CONFIG = TrainConfig(steps=6, p=4, k=3, learning_rate=1e-4, checkpoint_every=2, augment=False, seed=3)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> FaceCrops:
    """The crops of one set's photos, by the project's detector (a labels file of that set)."""
    root = tmp_path_factory.mktemp("training-data")
    labels = json.loads((DATA / "labels.json").read_text())
    (root / "labels.json").write_text(json.dumps({"sets": {SET: labels["sets"][SET]}}))
    (root / SET).symlink_to(DATA / SET)
    found = load_crops(root / "labels.json", root / "cache", DEFAULT_MODEL)
    assert len(found) >= 20 and found.crops.shape[1:] == DEFAULT_MODEL.crop.shape
    again = load_crops(root / "labels.json", root / "cache", DEFAULT_MODEL)  # read from the cache
    assert again.photos == found.photos and np.array_equal(again.crops, found.crops)
    return found


@pytest.fixture(scope="module")
def base_network():
    from services.embedder.serving.weights.facenet_casia import load_casia_facenet

    return load_casia_facenet()


def served(network):
    from services.embedder.serving.weights.onnx_export import ServedFaceNet

    return ServedFaceNet(copy.deepcopy(network), DEFAULT_MODEL)


@pytest.fixture(scope="module")
def split(crops: FaceCrops) -> tuple[FaceCrops, FaceCrops]:
    training, held_out = split_by_identity(crops, 0.25, seed=0)
    assert not set(training.identities) & set(held_out.identities)
    assert len(set(held_out.identities)) == 2
    return training, held_out


def fixed_batch_loss(training: Training) -> float:
    """The loss of batch 0, without a step."""
    with torch.no_grad():
        pixels, labels = training.batch(0)
        distances = pairwise_distances(training.served(pixels))
        return triplet_loss(distances, *batch_hard(distances, labels), CONFIG.margin)[0].item()


@pytest.fixture(scope="module")
def trained(base_network, split, tmp_path_factory: pytest.TempPathFactory) -> Training:
    training = Training(served(base_network), split[0], CONFIG, tmp_path_factory.mktemp("run"), "base")
    training.loss_before = fixed_batch_loss(training)
    training.run()
    training.loss_after = fixed_batch_loss(training)
    return training


def test_only_the_last_blocks_train(base_network) -> None:
    network = copy.deepcopy(base_network)
    trainable = freeze(network, CONFIG.trainable)
    names = {name for name, p in network.named_parameters() if p.requires_grad}
    assert names and all(name.split(".")[0] in CONFIG.trainable for name in names)
    assert len(trainable) == len(names) and not network.conv2d_1a.conv.weight.requires_grad
    with pytest.raises(TrainingError, match="no module nope"):
        freeze(network, ("nope",))


def test_the_training_loss_falls(trained: Training, split, base_network) -> None:
    history = [item["loss"] for item in trained.history]
    print(f"loss per step {[round(x, 4) for x in history]}")
    print(f"loss of batch 0: {trained.loss_before:.4f} -> {trained.loss_after:.4f}")
    assert trained.step_done == CONFIG.steps and len(history) == CONFIG.steps
    assert trained.loss_after < 0.5 * trained.loss_before
    assert np.mean(history[-2:]) < np.mean(history[:2])
    # The frozen blocks are unchanged; the trained ones are not.
    state, base = trained.network.state_dict(), base_network.state_dict()
    assert torch.equal(state["repeat_2.0.conv2d.weight"], base["repeat_2.0.conv2d.weight"])
    assert not torch.equal(state["last_linear.weight"], base["last_linear.weight"])
    before, after = measure(served(base_network), split[1]), measure(trained.served, split[1])
    print(f"held out: ROC AUC {before['roc_auc']:.4f} -> {after['roc_auc']:.4f}")
    assert before["genuine_pairs"] == after["genuine_pairs"] > 0 and 0 <= after["roc_auc"] <= 1


def test_a_resumed_run_goes_on_from_its_checkpoint(trained: Training, split, base_network, tmp_path: Path) -> None:
    kept = checkpoints(trained.checkpoint_folder())
    assert [p.name for p in kept] == ["step-00000004.pt", "step-00000006.pt"]  # the latest two
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(kept[0], tmp_path / "checkpoints")  # as if the run had stopped after step 4
    resumed = Training(served(base_network), split[0], CONFIG, tmp_path, "base")
    assert resumed.resume() == tmp_path / "checkpoints" / kept[0].name
    state = torch.load(kept[0], weights_only=True)
    assert resumed.step_done == 4 and resumed.history == trained.history[:4]
    saved, loaded = state["optimizer"], resumed.optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"] and set(loaded["state"]) == set(saved["state"])
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    resumed.run()
    assert resumed.step_done == CONFIG.steps
    assert [round(h["loss"], 4) for h in resumed.history] == [round(h["loss"], 4) for h in trained.history]
    ours, theirs = resumed.network.state_dict(), trained.network.state_dict()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-5
    other = Training(served(base_network), split[0], CONFIG, tmp_path, "other weights")
    with pytest.raises(TrainingError, match="other weights"):
        other.resume()


def test_the_export_is_served_by_triton_as_a_new_version(
    trained: Training, split, onnx_python_models, tmp_path: Path
) -> None:
    import tritonclient.grpc as grpcclient

    from services.embedder.serving.provisioning import Manifest, ProvisioningError, prepare_models
    from services.embedder.serving.weights.sources import WeightsFile
    from services.embedder.training.export import export_version

    repository = tmp_path / "models"
    shutil.copytree(
        onnx_python_models.model_repository, repository, ignore=shutil.ignore_patterns("__pycache__", ".triton")
    )
    base = WeightsFile("casia", Path("graph_final.pb"), "base")
    version = export_version(trained.served, repository, base, {"steps": trained.step_done})
    model_id = DEFAULT_MODEL.id
    assert version.version == "2" and version.key == f"onnx-python/{model_id}/2"
    folder = repository / "onnx-python" / model_id / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.py"]
    onnx_bytes = (folder / "model.onnx").read_bytes()

    # Pinning the new version: the config serves it, and its file is verified, not remade.
    settings = onnx_python_models.model_copy(update={"model_repository": repository, "model_version": "2"})
    manifest = prepare_models(settings, flavours=["onnx-python"])
    assert (folder / "model.onnx").read_bytes() == onnx_bytes
    assert version.key in Manifest.read(repository).trained and manifest.flavours["onnx-python"].version == "2"
    assert "versions: 2" in (repository / "onnx-python" / model_id / "config.pbtxt").read_text()

    crops = split[1].crops[:4]
    with torch.no_grad():
        expected = trained.served(torch.from_numpy(crops)).numpy()
    with new_triton_server(repository / "onnx-python", tmp_path / "triton") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput(DEFAULT_MODEL.input.name, list(crops.shape), "UINT8")
        tensor.set_data_from_numpy(crops)
        result = client.infer(model_id, [tensor], model_version="2")
        vectors = result.as_numpy(DEFAULT_MODEL.output.name)
        assert result.get_response().model_version == "2"
        assert not client.is_model_ready(model_id, "1")
    assert vectors.shape == (len(crops), DEFAULT_MODEL.dimension) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors - expected).max() < 1e-5

    # A flavour that cannot serve it refuses before anything is written; pinning version 1
    # again makes version 1 from the weights and leaves the fine-tuned files alone.
    config = repository / "onnx-python" / model_id / "config.pbtxt"
    manifest_text, config_text = (repository / "manifest.json").read_text(), config.read_text()
    with pytest.raises(ProvisioningError, match="torch-cuda-python flavour cannot serve it"):
        changed = settings.model_copy(update={"max_batch_size": 4})  # would rewrite the onnx-python config
        prepare_models(changed, flavours=["onnx-python", "torch-cuda-python"])
    assert (repository / "manifest.json").read_text() == manifest_text and config.read_text() == config_text
    prepare_models(settings.model_copy(update={"model_version": "1"}), flavours=["onnx-python"])
    assert (folder / "model.onnx").read_bytes() == onnx_bytes
    assert (repository / "onnx-python" / model_id / "1" / "model.onnx").is_file()
    assert version.key in Manifest.read(repository).trained
