"""timm families at 32x32: prune to 2x with l2 and taylor, forward, MACs target, checkpoint round trip; attention
heads (num_heads/head_dim, fused attention, head and head-dim ratios), unwrapped parameters, isomorphic scope, and
clear errors for what cannot be pruned."""
import pytest
import torch

import pruning
from pruning import PruneBenchError
from pruning.family import attention_modules
from pruning.preflight import check_input_size, check_prunable

SIZE, CLASSES = 32, 10
FAMILIES = {  # the smallest timm variant of each family
    "resnet": "resnet10t",
    "deit": "deit_tiny_patch16_224",
    "convnext": "convnext_atto",
    "mobilenetv3": "mobilenetv3_small_050",
    "efficientnet": "efficientnet_lite0",
    "regnet": "regnetx_002",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name, seed=0):
    torch.manual_seed(seed)
    return pruning.create_model(f"timm/{name}", CLASSES, 3, SIZE).eval()


def example():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def calibration():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (8,), generator=g))]


def prune(model, method="l2", speedup=2.0, scope="protected", steps=10, **options):
    return pruning.prune(model, example(), method, speedup, scope, data=calibration(), steps=steps,
                         calibration_batches=1, num_classes=CLASSES, **options)


def roundtrip(model, name, tmp_path):
    path = pruning.save_checkpoint(tmp_path / "m.pt", model, model_name=f"timm/{name}", num_classes=CLASSES,
                                   in_chans=3, input_size=SIZE)
    loaded, _ = pruning.load_checkpoint(path)
    return loaded.eval()


@pytest.mark.parametrize("method", ["l2", "taylor"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_prunes_to_2x_and_reloads(family, method, tmp_path):
    name = FAMILIES[family]
    model = build(name)
    x = example()
    model, report = prune(model, method)
    assert report.target_reached and report.speedup >= 2.0
    macs, _ = pruning.count_macs_params(model, x)
    assert report.macs_dense / macs >= 2.0
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (1, CLASSES) and torch.isfinite(out).all()
    assert model.get_classifier().out_features == CLASSES  # head protected
    loaded = roundtrip(model, name, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


def _attn_consistent(model):
    for _, m in attention_modules(model):
        assert m.qkv.out_features == 3 * m.num_heads * m.head_dim
        assert m.attn_dim == m.num_heads * m.head_dim == m.proj.in_features
        assert m.scale == pytest.approx(m.head_dim ** -0.5)


def test_attention_heads_pruned_fused_matches_unfused_and_reloads(tmp_path):
    name = FAMILIES["deit"]
    model = build(name)
    heads = sum(m.num_heads for _, m in attention_modules(model))
    model, report = prune(model, "l2", head_ratio=0.34)
    _attn_consistent(model)
    assert sum(m.num_heads for _, m in attention_modules(model)) < heads
    x = example()
    with torch.no_grad():
        for _, m in attention_modules(model):
            m.fused_attn = True
        fused = model(x)
        for _, m in attention_modules(model):
            m.fused_attn = False
        plain = model(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    loaded = roundtrip(model, name, tmp_path)
    assert [m.num_heads for _, m in attention_modules(loaded)] == [m.num_heads for _, m in attention_modules(model)]
    _attn_consistent(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), plain, rtol=1e-5, atol=1e-6)


def test_head_dim_ratio_options():
    name = FAMILIES["deit"]
    kept, _ = prune(build(name), "l2", head_dim_ratio=0.0)
    assert all(m.head_dim == 64 for _, m in attention_modules(kept))  # head dims untouched
    fixed, _ = prune(build(name), "l2", head_dim_ratio=0.25)
    dims = [m.head_dim for _, m in attention_modules(fixed)]
    assert sum(dims) == 48 * len(dims)  # a quarter of all head dims, ranked across the attention layers
    _attn_consistent(fixed)


def test_unwrapped_parameters_pruned_consistently():
    deit, _ = prune(build(FAMILIES["deit"]), scope="local")  # local pruning narrows the embedding too
    width = deit.patch_embed.proj.out_channels
    assert width < 192
    assert deit.pos_embed.shape[-1] == deit.cls_token.shape[-1] == width == deit.norm.normalized_shape[0]
    convnext, _ = prune(build(FAMILIES["convnext"]))
    for block in convnext.stages[1].blocks:
        assert block.gamma.shape[0] == block.conv_dw.out_channels


def test_grouped_convolutions_keep_two_channels_per_group():
    model, _ = prune(build(FAMILIES["regnet"]), "l2", speedup=3.0)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.in_channels:
            assert m.in_channels // m.groups >= 2


@pytest.mark.parametrize("family", ["deit", "convnext"])
def test_isomorphic_and_global_allocate_differently(family):
    name = FAMILIES[family]
    glob, r_glob = prune(build(name), "l2", scope="global")
    iso, r_iso = prune(build(name), "l2", scope="isomorphic")
    assert r_glob.speedup >= 2.0 and r_iso.speedup >= 2.0
    widths = lambda rep: {row["layer"]: row["channels"] for row in rep.channels}
    assert widths(r_glob) != widths(r_iso)


def test_unknown_timm_model():
    with pytest.raises(PruneBenchError, match="unknown timm model"):
        pruning.create_model("timm/resnet_does_not_exist", CLASSES, 3, SIZE)


def test_unsupported_attention_names_the_layer_type():
    model = pruning.create_model("timm/swin_tiny_patch4_window7_224", CLASSES, 3, SIZE)
    with pytest.raises(PruneBenchError, match="WindowAttention"):
        check_prunable(model, example(), CLASSES)


def test_input_size_the_model_cannot_take():
    model = pruning.create_model("timm/deit_tiny_patch16_224", CLASSES, 3, 8)
    with pytest.raises(PruneBenchError, match="cannot take 8x8 inputs"):
        check_input_size(model, torch.randn(1, 3, 8, 8))
