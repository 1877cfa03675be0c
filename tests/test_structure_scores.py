"""Group scores against an explicit-gate autograd computation and hand-written group norms."""

from __future__ import annotations

import pytest
import torch
from families import tiny_batches
from test_structure_slicing import family_model
from torch import nn

from hf_afr import PrunerConfig
from hf_afr.criteria.gradients import accumulate_gradients
from hf_afr.structure import scores as S
from hf_afr.structure.groups import block_groups, model_layout
from hf_afr.structure.slicing import get_submodule, transformer_layers

pytestmark = pytest.mark.usefixtures("single_thread")


def explicit_gate_gradients(model, batches, config, objectives):
    """Insert one multiplicative gate per head and per unit and differentiate w.r.t. them."""
    layout = model_layout(model)
    gates, handles = {}, []
    for name, block in transformer_layers(model, layout).items():
        g = next(g for g in block_groups(model) if g.name == name)
        head_gate = nn.Parameter(torch.ones(g.heads))
        unit_gate = nn.Parameter(torch.ones(g.units))
        gates[f"heads/{name}"], gates[f"units/{name}"] = head_gate, unit_gate

        def gate_heads(module, args, gate=head_gate, size=g.head_dim):
            return (args[0] * gate.repeat_interleave(size),)

        def gate_units(module, args, gate=unit_gate):
            return (args[0] * gate,)

        handles.append(get_submodule(block, layout.output).register_forward_pre_hook(gate_heads))
        handles.append(get_submodule(block, layout.fc2).register_forward_pre_hook(gate_units))
    try:
        sums = accumulate_gradients(model, batches, gates, config, objectives=objectives)
    finally:
        for handle in handles:
            handle.remove()
    return [
        {kind: {k.split("/", 1)[1]: v for k, v in grads.items() if k.startswith(kind)}
         for kind in ("heads", "units")}
        for grads in sums
    ]  # fmt: skip


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("family", ["vit", "swin", "data2vec-vision", "siglip"])
def test_gate_derivation_equals_autograd_on_explicit_gates(family, center):
    model = family_model(family)
    batches = tiny_batches(n_batches=2, batch_size=4)
    config = PrunerConfig(method="afr", feature_center=center)
    derived = S.gate_gradients(model, batches, config, ("loss", "refer"))
    explicit = explicit_gate_gradients(model, batches, config, ("loss", "refer"))
    for mine, theirs in zip(derived, explicit):
        for kind in ("heads", "units"):
            assert mine[kind].keys() == theirs[kind].keys()
            for name in mine[kind]:
                expected = theirs[kind][name]
                assert expected.abs().max() > 1e-6
                torch.testing.assert_close(mine[kind][name], expected, rtol=2e-3, atol=1e-5)


def test_group_scores_of_each_method_follow_their_definitions():
    model = family_model("vit")
    batches = tiny_batches(n_batches=2, batch_size=4)
    groups = block_groups(model)
    cost = {"heads": groups[0].head_cost, "units": groups[0].unit_cost}
    loss, refer = explicit_gate_gradients(model, batches, PrunerConfig(), ("loss", "refer"))

    def close(actual, expected):
        for kind in ("heads", "units"):
            for name in expected[kind]:
                torch.testing.assert_close(
                    actual[kind][name], expected[kind][name], rtol=2e-3, atol=1e-6
                )

    def density(gates):
        return {k: {n: v.abs() / cost[k] for n, v in per.items()} for k, per in gates.items()}

    snip = S.group_scores(model, batches, PrunerConfig(method="snip"))
    close(snip, density(loss))
    close(S.group_scores(model, batches, PrunerConfig(method="refer")), density(refer))
    afr = S.group_scores(model, batches, PrunerConfig(method="afr"))
    for kind in ("heads", "units"):
        names = list(loss[kind])
        parts = []
        for gates in (loss, refer):
            flat = torch.cat([gates[kind][n].abs() for n in names]).double()
            parts.append((flat - flat.mean()) / flat.std(unbiased=False))
        expected = torch.cat([afr[kind][n] for n in names]).double()
        torch.testing.assert_close(expected, parts[0] + parts[1], rtol=1e-3, atol=1e-4)
    pooled = S.group_scores(model, batches, PrunerConfig(method="afr", group_ranking="pooled"))
    names = list(loss["heads"])
    parts = []
    for gates in (loss, refer):  # z-scores over heads and units together
        flat = torch.cat([density(gates)[k][n] for k in ("heads", "units") for n in names]).double()
        parts.append((flat - flat.mean()) / flat.std(unbiased=False))
    actual = torch.cat([pooled[k][n] for k in ("heads", "units") for n in names]).double()
    torch.testing.assert_close(actual, parts[0] + parts[1], rtol=1e-3, atol=1e-4)
    per_layer = S.group_scores(
        model, batches, PrunerConfig(method="afr", group_ranking="per_layer")
    )
    for kind in ("heads", "units"):
        for n in names:  # z-scores over one kind's groups of one block
            parts = []
            for gates in (loss, refer):
                flat = density(gates)[kind][n].double()
                parts.append((flat - flat.mean()) / flat.std(unbiased=False))
            torch.testing.assert_close(
                per_layer[kind][n].double(), parts[0] + parts[1], rtol=1e-3, atol=1e-4
            )
    # magnitude: the group's weights gathered by hand, per sqrt(weight)
    layer = model.vit.layers[1]
    head = 2
    rows = slice(head * 8, head * 8 + 8)
    owned = [layer.attention.q_proj.weight[rows], layer.attention.k_proj.weight[rows],
             layer.attention.v_proj.weight[rows], layer.attention.o_proj.weight[:, rows].T]  # fmt: skip
    norm = torch.cat([w.flatten() for w in owned]).norm() / cost["heads"] ** 0.5
    magnitude = S.group_scores(model, None, PrunerConfig(method="magnitude"))
    torch.testing.assert_close(magnitude["heads"]["vit.layers.1"][head], norm.detach())
    unit = (
        torch.cat([layer.mlp.fc1.weight[5], layer.mlp.fc2.weight[:, 5]]).norm()
        / cost["units"] ** 0.5
    )
    torch.testing.assert_close(magnitude["units"]["vit.layers.1"][5], unit.detach())
    # fisher: per-batch squared gate gradients, summed
    fisher = S.group_scores(model, batches, PrunerConfig(method="fisher"))
    per_batch = [explicit_gate_gradients(model, [b], PrunerConfig(), ("loss",))[0] for b in batches]
    expected = {k: {n: sum(p[k][n].square() for p in per_batch) for n in loss[k]} for k in loss}
    close(fisher, density(expected))
    first = S.group_scores(model, None, PrunerConfig(method="random", seed=3))
    again = S.group_scores(model, None, PrunerConfig(method="random", seed=3))
    assert torch.equal(first["units"]["vit.layers.0"], again["units"]["vit.layers.0"])
    with pytest.raises(ValueError, match="one of afr, snip"):
        S.group_scores(model, batches, PrunerConfig(method="synflow"))
