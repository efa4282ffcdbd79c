"""The model-side techniques of PR #1855: content-gated BOS-fixed SmearGate, SparseAttnGate, two-lane cross
routing, and the full-size parameter inventory (notes/pr1855.md §3.4, §11.2, §11.3, §11.7)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import pgolf
from pgolf.config import ConfigError
from pgolf.model.attention import AttentionContext, CausalSelfAttention
from pgolf.model.embeddings import ContentSmearGate
from pgolf.model.layers import Rotary, qclass_of, rms_norm, role_of
from pgolf.quant.quantize import plan_tensor

from test_model import BOS, SMALL, _perturb_zero_inits, random_ids, small_model

CONTENT_SMEAR = {"model.smear": "content_gate", "model.gate_window": 8}
SPARSE_GATE = {"model.sparse_attn_gate": True, "model.sparse_attn_gate_scale": 0.5, "model.gate_window": 4}
CROSS_LANES = {"model.parallel_residual": "cross_lanes", "model.parallel_start_layer": 2}


def fresh_model(overrides: dict, seed: int = 0):
    cfg = pgolf.load_recipe("baseline", overrides={**SMALL, **overrides})
    torch.manual_seed(seed)
    return pgolf.build_model(cfg.model).eval()


# ----------------------------------------------------------------------------- content-gated SmearGate


def smear_reference(e: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, lam: float, bos: int) -> torch.Tensor:
    """Position by position: e_t + lam * sigmoid(sum_j w_j e_t[j]) * e_{t-1}, unless t = 0 or id_t is BOS."""
    out = e.clone()
    window = w.numel()
    for b in range(e.size(0)):
        for t in range(1, e.size(1)):
            if int(ids[b, t]) == bos:
                continue
            g = lam * (1.0 / (1.0 + torch.exp(-(w * e[b, t, :window]).sum())))
            out[b, t] = e[b, t] + g * e[b, t - 1]
    return out


def random_smear_gate(window: int, lam: float, g: torch.Generator) -> ContentSmearGate:
    gate = ContentSmearGate(window, BOS)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(1, window, generator=g))
        gate.lam.fill_(lam)
    return gate


def test_content_smear_equals_the_hand_written_reference():
    g = torch.Generator().manual_seed(0)
    gate = random_smear_gate(5, 0.7, g)
    e = torch.randn(2, 9, 16, generator=g)
    ids = torch.tensor([[BOS, 4, 5, 6, BOS, 7, 8, 9, 3], [3, 4, BOS, BOS, 7, 8, 9, 2, 2]])  # row 1 starts mid-document
    with torch.no_grad():
        torch.testing.assert_close(gate(e, ids), smear_reference(e, ids, gate.weight[0], 0.7, BOS), rtol=1e-6, atol=1e-6)


def test_content_smear_gate_reads_only_the_current_tokens_first_window_dims():
    g = torch.Generator().manual_seed(1)
    gate = random_smear_gate(4, 1.3, g)
    e = torch.randn(1, 6, 10, generator=g)
    ids = torch.tensor([[BOS, 5, 6, 7, 8, 9]])
    changed = e.clone()
    changed[:, 3, 4:] += torch.randn(6, generator=g)  # dims >= window of token 3
    with torch.no_grad():
        # out_t - e_t = g_t e_{t-1}: token 3's gate is unchanged by its own dims >= window
        torch.testing.assert_close((gate(changed, ids) - changed)[:, 3], (gate(e, ids) - e)[:, 3], rtol=0, atol=1e-6)
        moved = e.clone()
        moved[:, 3, :4] += 1.0
        assert not torch.allclose((gate(moved, ids) - moved)[:, 3], (gate(e, ids) - e)[:, 3])


def test_content_smear_at_init_is_the_identity_as_in_the_record():
    with_smear = fresh_model(CONTENT_SMEAR)
    assert with_smear.smear.weight.shape == (1, 8) and with_smear.smear.lam.shape == (1,)
    assert with_smear.smear.weight.abs().sum() == 0 and with_smear.smear.lam.abs().sum() == 0
    without = fresh_model({})
    without.load_state_dict({k: v for k, v in with_smear.state_dict().items() if not k.startswith("smear.")})
    ids = random_ids(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(with_smear(ids), without(ids), rtol=0, atol=0)


@pytest.mark.parametrize("extra", [{}, {"model.bigram_buckets": 97, "model.bigram_dim": 16}])
def test_content_smear_never_carries_the_last_token_of_a_document_into_the_next(extra):
    """Changing only document A's last token leaves every logit of document B unchanged (doc attention on)."""
    model = small_model({**CONTENT_SMEAR, **extra, "model.doc_attention": True})
    assert float(model.smear.lam.detach()) != 0
    g = torch.Generator().manual_seed(3)
    doc_a = torch.randint(2, 64, (1, 12), generator=g)
    doc_b = torch.randint(2, 64, (1, 10), generator=g)
    bos = torch.tensor([[BOS]])
    ids = torch.cat([bos, doc_a, bos, doc_b], dim=1)
    changed = ids.clone()
    changed[0, 12] = 2 + (int(ids[0, 12]) - 1) % 62  # the last token of document A, to another id
    assert changed[0, 12] != ids[0, 12]
    with torch.no_grad():
        base, out = model(ids), model(changed)
    torch.testing.assert_close(out[:, 13:], base[:, 13:], rtol=0, atol=0)
    assert not torch.allclose(out[:, 12], base[:, 12])


# ----------------------------------------------------------------------------- SparseAttnGate


def attention_parts(cfg_overrides: dict, seed: int = 0):
    cfg = pgolf.load_recipe("baseline", overrides={**SMALL, "model.xsa_last_n": -1, **cfg_overrides}).model
    torch.manual_seed(seed)
    attn = CausalSelfAttention(cfg, use_value_residual=False, use_xsa=True, use_value_embed=False)
    _perturb_zero_inits(attn)
    head_dim = cfg.model_dim // cfg.num_heads
    cos, sin = Rotary(head_dim, 0, cfg.rope_base).tables(12, torch.device("cpu"))
    ctx = lambda: AttentionContext(cos=cos, sin=sin, rotary_dims=head_dim)  # noqa: E731
    return cfg, attn, ctx


def test_sparse_gate_at_init_halves_every_head_exactly():
    cfg, gated, ctx = attention_parts(SPARSE_GATE)
    with torch.no_grad():
        gated.sparse_gate_w.zero_()  # the record's init (std 0), after the perturbation of the other weights
    plain = copy.deepcopy(gated)
    plain.sparse_gate_w = None
    x = torch.randn(2, 12, cfg.model_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gated(x, ctx()), 0.5 * plain(x, ctx()), rtol=0, atol=0)
    fresh = pgolf.build_model(pgolf.load_recipe("baseline", overrides={**SMALL, **SPARSE_GATE}).model)
    assert all(b.attn.sparse_gate_w.abs().sum() == 0 for b in fresh.blocks)


def test_sparse_gate_equals_the_hand_written_reference():
    """out = W_o (sigmoid(s * W_g x[:window]) * XSA(y)) per head: the slice, the scale inside, the place after XSA."""
    cfg, gated, ctx = attention_parts(SPARSE_GATE)
    H, window, d = cfg.num_heads, cfg.gate_window, cfg.model_dim
    exposed = copy.deepcopy(gated)  # same attention, no gate, identity output projection: returns XSA(y) itself
    exposed.sparse_gate_w = None
    with torch.no_grad():
        exposed.proj.weight.copy_(torch.eye(d))
    x = torch.randn(2, 12, d, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = exposed(x, ctx()).view(2, 12, H, d // H)
        logits = torch.einsum("btj,hj->bth", x[..., :window], gated.sparse_gate_w)
        ref = (torch.sigmoid(0.5 * logits)[..., None] * y).reshape(2, 12, d) @ gated.proj.weight.T
        torch.testing.assert_close(gated(x, ctx()), ref, rtol=1e-5, atol=1e-6)


def test_sparse_gate_weights_are_scalar_role_and_gate_class():
    model = fresh_model(SPARSE_GATE)
    qcfg = pgolf.load_recipe("baseline").quant
    for block in model.blocks:
        w = block.attn.sparse_gate_w
        assert w.shape == (4, 4) and role_of(w) == "scalar" and qclass_of(w) == "gate"
        assert plan_tensor(w, "gate", qcfg).encoding == qcfg.control_dtype  # floats until a gate quantization
    dense = fresh_model({"model.attn_gate": True})
    assert qclass_of(dense.blocks[0].attn.gate_w) == "gate" and qclass_of(dense.blocks[0].attn.gate_b) == "control"
    plain = pgolf.load_recipe("baseline", overrides=SMALL).model
    assert pgolf.count_parameters(model.cfg) - pgolf.count_parameters(plain) == 4 * 4 * 4  # layers x heads x window


# ----------------------------------------------------------------------------- two-lane cross routing


def test_cross_lanes_reduce_to_separate_lanes_at_rho_one_and_identity_routing():
    """With resid_mix at (1, 0), rho = 1, P = I and separate lanes' merge at 0.5 the two modes are one function."""
    common = {"model.parallel_start_layer": 2, "model.unet_skips": False}
    cross = small_model({**common, "model.parallel_residual": "cross_lanes"})
    separate = small_model({**common, "model.parallel_residual": "separate_lanes"})
    with torch.no_grad():
        for block in cross.blocks:
            block.resid_mix.copy_(torch.stack((torch.ones(32), torch.zeros(32))))
        state = {k: v for k, v in cross.state_dict().items() if not k.startswith("lane_")}
        separate.load_state_dict({**state, "lane_merge": torch.tensor(0.5)})
        cross.lane_resid.fill_(1.0)
        cross.lane_post.copy_(torch.eye(2).expand(4, 2, 2))
    ids = random_ids(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(cross(ids), separate(ids), rtol=1e-6, atol=1e-6)


def cross_lanes_reference(model, ids: torch.Tensor) -> torch.Tensor:
    """4 blocks, encoder 0-1, decoder 2-3 both in lanes (start 2): the routing written out from notes/pr1855.md §3.1."""
    cos, sin = model.rotary.tables(ids.size(1), ids.device)
    ctx = AttentionContext(cos=cos, sin=sin, rotary_dims=model.rotary.rotary_dims)
    x = x0 = rms_norm(F.embedding(ids, model.tok_emb))
    skips = []
    for i in (0, 1):
        x = model.blocks[i](x, x0, ctx)
        skips.append(x)
    lane0 = lane1 = x  # split first: the skip of the first lane position reaches lane 0 only
    for k, i in enumerate((2, 3)):
        s = model.skip_weights[k] * skips.pop()
        lane0 = s + torch.sigmoid(model.skip_gates[k]) * (lane0 - s) if model.skip_gates is not None else lane0 + s
        blk = model.blocks[i]
        a = blk.attn_scale * blk.attn(rms_norm(blk.resid_mix[0] * lane0 + blk.resid_mix[1] * x0), ctx)
        m = blk.mlp_scale * blk.mlp(rms_norm(lane1))
        rho, p = model.lane_resid[i], model.lane_post[i]  # p[source (0 attn, 1 mlp), lane]
        lane0, lane1 = (rho[0] * lane0 + p[0, 0] * a + p[1, 0] * m, rho[1] * lane1 + p[0, 1] * a + p[1, 1] * m)
    h = rms_norm(0.5 * (lane0 + lane1))
    z = h @ model.tok_emb.T
    return 30.0 * torch.tanh(z / 30.0)


@pytest.mark.parametrize("skip_gates", [False, True])
def test_cross_lanes_equal_the_hand_written_routing(skip_gates):
    model = small_model({**CROSS_LANES, "model.skip_gates": skip_gates})
    with torch.no_grad():  # distinct routing weights, so a transposed P or a swapped rho shows
        model.lane_post.copy_(torch.tensor([[1.1, -0.4], [0.7, 0.9]]).expand(4, 2, 2))
        model.lane_resid.copy_(torch.tensor([1.2, 0.8]).expand(4, 2))
    ids = random_ids(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), cross_lanes_reference(model, ids), rtol=1e-5, atol=1e-5)


def test_cross_lanes_mlp_reaches_lane0_and_resid_mix_is_only_the_attention_input():
    model = small_model(CROSS_LANES)
    ids = random_ids(2, 24)
    with torch.no_grad():
        model.lane_post[:, 1, 0] = 0.0
        base = model(ids)
        model.lane_post[3, 1, 0] = 0.5  # the MLP of block 3 now also writes into lane 0
        assert not torch.allclose(model(ids), base)
        model.lane_post[3, 1, 0] = 0.0
        for block in model.blocks[2:]:
            block.attn_scale.zero_()  # no attention output: resid_mix is read by nothing else in the lanes
        base = model(ids)
        for block in model.blocks[2:]:
            block.resid_mix.add_(0.3)
        torch.testing.assert_close(model(ids), base, rtol=0, atol=0)


def test_cross_lanes_allocate_every_layer_and_no_merge_weight():
    model = fresh_model(CROSS_LANES)
    assert model.lane_merge is None and model.lane_resid.shape == (4, 2) and model.lane_post.shape == (4, 2, 2)
    assert torch.all(model.lane_resid == 1.1) and torch.all(model.lane_post == 1.0)
    for p in (model.lane_resid, model.lane_post):
        assert role_of(p) == "scalar" and qclass_of(p) == "control"
    plain = pgolf.load_recipe("baseline", overrides=SMALL).model
    assert pgolf.count_parameters(model.cfg) - pgolf.count_parameters(plain) == 6 * 4


def test_cross_lanes_check_that_every_later_decoder_position_is_a_lane_position():
    with pytest.raises(ConfigError, match="parallel_start_layer"):
        pgolf.load_recipe("baseline", overrides={**SMALL, "model.parallel_residual": "cross_lanes",
                                                 "model.parallel_start_layer": 3,
                                                 "model.layer_schedule": [0, 1, 3, 2]})


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("overrides, key", [
    ({"model.attn_gate": True, "model.sparse_attn_gate": True}, "model.sparse_attn_gate"),
    ({"model.smear": "content_gate", "model.gate_window": 33}, "model.gate_window"),
    ({"model.sparse_attn_gate": True, "model.gate_window": 0}, "model.gate_window"),
    ({"model.sparse_attn_gate": True, "model.sparse_attn_gate_init_std": -0.1}, "sparse_attn_gate_init_std"),
    ({"model.mlp": "swiglu", "train.fused_mlp": "triton"}, "train.fused_mlp"),
])
def test_gate_and_kernel_settings_are_checked(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        pgolf.load_recipe("baseline", overrides={**SMALL, **overrides})


# ----------------------------------------------------------------------------- #1855 at full size

PR1855_MODEL = {"model.parallel_residual": "cross_lanes", "model.parallel_start_layer": 8,
                "model.smear": "content_gate", "model.gate_window": 12,
                "model.sparse_attn_gate": True, "model.sparse_attn_gate_scale": 0.5}


def test_pr1855_like_model_has_the_logged_parameter_count_and_inventory():
    """#1855 logs model_params:35945671 = pr1536's 35,944,537 - 1 (lane merge) + 11 x 8 x 12 + 66 + 13."""
    cfg = pgolf.load_recipe("pr1536", overrides=PR1855_MODEL)
    assert pgolf.count_parameters(cfg.model) == 35_945_671
    with torch.device("meta"):
        model = pgolf.build_model(cfg.model)
    params = dict(model.named_parameters())
    expected = {  # name: (shape, role, qclass), notes/pr1855.md §3.4
        "smear.weight": ((1, 12), "scalar", "control"), "smear.lam": ((1,), "scalar", "control"),
        "lane_resid": ((11, 2), "scalar", "control"), "lane_post": ((11, 2, 2), "scalar", "control"),
        "tok_emb": ((8192, 512), "embed", "embed"),
        "skip_weights": ((8, 512), "scalar", "control"), "skip_gates": ((8, 512), "scalar", "control"),
    }
    for i in range(11):
        expected |= {
            f"blocks.{i}.attn.sparse_gate_w": ((8, 12), "scalar", "gate"),
            f"blocks.{i}.attn.q_gain": ((8,), "scalar", "control"),
            f"blocks.{i}.attn.c_q.weight": ((512, 512), "matrix", "attn"),
            f"blocks.{i}.attn.c_k.weight": ((256, 512), "matrix", "attn"),
            f"blocks.{i}.attn.c_v.weight": ((256, 512), "matrix", "attn"),
            f"blocks.{i}.attn.proj.weight": ((512, 512), "matrix", "attn"),
            f"blocks.{i}.mlp.fc.weight": ((2048, 512), "matrix", "mlp"),
            f"blocks.{i}.mlp.proj.weight": ((512, 2048), "matrix", "mlp"),
            f"blocks.{i}.attn_scale": ((512,), "scalar", "control"),
            f"blocks.{i}.mlp_scale": ((512,), "scalar", "control"),
            f"blocks.{i}.resid_mix": ((2, 512), "scalar", "control"),
        }
    assert set(params) == set(expected), set(params) ^ set(expected)
    for name, (shape, role, qclass) in expected.items():
        p = params[name]
        assert (tuple(p.shape), role_of(p), qclass_of(p)) == (shape, role, qclass), name
