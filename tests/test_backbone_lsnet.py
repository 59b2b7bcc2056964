"""LSNet parity with the official code (fixtures `lsnet_t`, `lsnet_t_attn`) and the backbone contract."""
import pytest
import torch
import torch.nn.functional as F
from parity import assert_close, load_fixture, synth

from cvkit.backbones import create_backbone
from cvkit.backbones.lsnet import (
    VARIANTS,
    Attention,
    LSNet,
    bias_index_table,
    convert_lsnet,
    convert_lsnet_cls,
    ska,
)
from cvkit.errors import CvkitError
from cvkit.nn import count_params, deploy
from cvkit.weights import load_state_dict_strict, load_weights


@pytest.fixture(autouse=True)
def no_grad():
    """Inference only in this module; grad mode is restored for the rest of the suite."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def lsnet_t():
    return load_fixture("backbones", "lsnet_t")


@pytest.fixture(scope="module")
def classifier(lsnet_t):
    model = LSNet(**VARIANTS["t"], num_classes=1000)
    load_state_dict_strict(model, convert_lsnet_cls(lsnet_t[2]))
    return model.eval()


def test_lsnet_t_classifier_features_and_logits_match_official(lsnet_t, classifier):
    meta, ref, _ = lsnet_t
    feats = classifier(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")
    assert_close(classifier.forward_head(feats[-1]), ref["logits"], meta["tolerance"], "logits")


def test_lsnet_t_deploy_matches_official_and_takes_official_deploy_keys(lsnet_t, classifier):
    meta, ref, _ = lsnet_t
    fused = deploy(classifier)
    feats = fused(ref["input"])
    for i, f in enumerate(feats):
        assert_close(f, ref[f"deploy.features.{i}"], meta["tolerance"], f"deploy.features.{i}")
    assert_close(fused.forward_head(feats[-1]), ref["deploy.logits"], meta["tolerance"], "deploy.logits")
    official = synth(meta["deploy"]["layout"], meta["seed"])
    load_state_dict_strict(fused, convert_lsnet_cls(official))


def test_lsnet_t_dense_form_from_classifier_checkpoint_matches_official_features(lsnet_t):
    # The dense wrapper's attention (14x14 bias table, resized) differs from the classifier's only
    # in the bias, which the saturated stage-4 softmax of this fixture ignores; lsnet_t_attn pins it.
    meta, ref, sd = lsnet_t
    model = create_backbone("lsnet_t")
    load_state_dict_strict(model, convert_lsnet({f"backbone.{k}": v for k, v in sd.items()}))
    model.eval()
    for i, f in enumerate(model(ref["input"])):
        assert_close(f, ref[f"features.{i}"], meta["tolerance"], f"features.{i}")
    for i, f in enumerate(deploy(model)(ref["input"])):
        assert_close(f, ref[f"deploy.features.{i}"], meta["tolerance"], f"deploy.features.{i}")


def test_lsnet_classifier_checkpoint_in_model_container_loads_into_dense_form(tmp_path):
    cfg = {"dims": (16, 16, 32, 32), "depths": (0, 1, 1, 2), "num_heads": (1, 1, 1, 2)}
    classifier = LSNet(**cfg, num_classes=10).eval()
    torch.save({"model": classifier.state_dict()}, tmp_path / "lsnet.pth")
    dense = load_weights(LSNet(**cfg), tmp_path / "lsnet.pth", converter="lsnet").eval()
    assert dense.blocks4[3].mixer.m.attention_biases.shape == (2, 196)
    x = torch.randn(1, 3, 224, 224)
    for a, b in zip(classifier(x)[:3], dense(x)[:3]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("form", ["classifier", "dense"])
def test_lsnet_t_attention_matches_official(form):
    meta, ref, _ = load_fixture("backbones", "lsnet_t_attn")
    tol = meta["tolerance"]
    if form == "classifier":
        attn = Attention(384, 16, 4, 6.0, resolution=4)
        sd, x, out = convert_lsnet_cls(synth(meta["layout"], meta["seed"])), ref["input"], "out"
    else:
        attn = Attention(384, 16, 4, 6.0, resolution=14, resize_bias=True)
        sd, x, out = convert_lsnet(synth(meta["layout_det"], meta["seed"])), ref["det_input"], "det_out"
    load_state_dict_strict(attn, sd)
    attn.eval()
    assert_close(attn(x), ref[out], tol, out)
    assert_close(deploy(attn)(x), ref[f"deploy.{out}"], tol, f"deploy.{out}")


def test_ska_is_the_per_pixel_depthwise_conv_with_interleaved_kernels():
    x = torch.randn(2, 24, 7, 9, dtype=torch.float64)
    w = torch.randn(2, 6, 25, 7, 9, dtype=torch.float64)
    cols = F.unfold(x, 5, padding=2).view(2, 24, 25, 7, 9)
    ref = (cols * w.repeat(1, 4, 1, 1, 1)).sum(2)
    torch.testing.assert_close(ska(x, w), ref)


def test_bias_index_table_numbers_offsets_in_order_of_first_appearance():
    r = 5
    points = [(i, j) for i in range(r) for j in range(r)]
    seen, idxs = {}, []
    for p1 in points:
        for p2 in points:
            idxs.append(seen.setdefault((abs(p1[0] - p2[0]), abs(p1[1] - p2[1])), len(seen)))
    assert torch.equal(bias_index_table(r), torch.tensor(idxs).view(r * r, r * r))


@pytest.mark.parametrize("variant,train,deployed", [("t", 11_409_832, 11_370_488), ("s", 16_146_000, None),
                                                    ("b", 23_314_000, None)])
def test_lsnet_param_counts_match_official(variant, train, deployed):
    with torch.device("meta"):
        model = LSNet(**VARIANTS[variant], num_classes=1000)
    assert abs(count_params(model) - train) <= 0.01 * train
    if deployed:
        assert abs(count_params(deploy(model)) - deployed) <= 0.01 * deployed


def test_lsnet_distilled_classifier_averages_both_heads():
    model = LSNet(**VARIANTS["t"], num_classes=10, distillation=True).eval()
    x = torch.randn(1, 384, 4, 4)
    pooled = x.mean((2, 3))
    torch.testing.assert_close(model.forward_head(x), (model.head(pooled) + model.head_dist(pooled)) / 2)
    with torch.device("meta"):
        distilled = LSNet(**VARIANTS["t"], num_classes=1000, distillation=True)
    assert abs(count_params(distilled) - 11_796_000) <= 0.01 * 11_796_000


def test_lsnet_feature_spec_matches_outputs_on_non_square_input_of_any_size():
    model = create_backbone("lsnet_tiny").eval()
    feats = model(torch.randn(1, 3, 72, 120))
    assert [f.shape[1] for f in feats] == list(model.feature_spec.channels)
    assert [(72 + s - 1) // s for s in model.feature_spec.strides] == [f.shape[2] for f in feats]
    assert [(120 + s - 1) // s for s in model.feature_spec.strides] == [f.shape[3] for f in feats]


def test_lsnet_out_indices_subset():
    model = create_backbone("lsnet_t", out_indices=(1, 3)).eval()
    feats = model(torch.randn(1, 3, 64, 96))
    assert model.feature_spec.channels == (128, 384) and model.feature_spec.strides == (16, 64)
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 4, 6), (384, 1, 2)]


def test_lsnet_classifier_rejects_stage4_map_other_than_4x4():
    model = LSNet((16, 16, 32, 32), (0, 1, 1, 2), (1, 1, 1, 2), num_classes=10).eval()
    assert model.classify(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    with pytest.raises(CvkitError, match="4x4"):
        model.classify(torch.randn(1, 3, 128, 128))
