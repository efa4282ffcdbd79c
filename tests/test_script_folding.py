"""What a generated train_gpt.py leaves out of the runtime modules when their switches are off.

The runtime code tests its frozen switches first (quant.method in quantize_rows, model.parallel_residual in
GPT.hidden, ...), reaches the resume and last-good paths only through pgolf.training.checkpoint, and passes Muon
constant choices that fold its checks (pgolf.artifact.specialise): these tests pin that the code of a switch
that is off is gone from the script while the code the config uses stays."""

from __future__ import annotations

import functools

import pgolf
from pgolf.artifact import bundle


@functools.lru_cache(maxsize=None)
def _carried(recipe: str) -> dict[str, str]:
    return {m.path: m.source for m in bundle.modules_for(pgolf.load_recipe(recipe))}


def test_a_script_without_checkpoints_carries_no_resume_or_last_good_code():
    code = _carried("baseline")
    assert not pgolf.load_recipe("baseline").train.checkpoint_every
    assert "pgolf/training/checkpoint.py" not in code
    loop = code["pgolf/training/loop.py"]
    assert "load_checkpoint" not in loop and "torch_rng" in loop  # the step's RNG snapshot stays (stop signal)
    assert "json.loads" not in code["pgolf/training/runs.py"]  # LogWriter's resume cut (reads the log back) is gone
    assert "def state_tensors" not in code["pgolf/optim/averaging.py"]


def test_off_switches_take_their_branches_out_of_model_optimizer_and_quantizer():
    base, lanes = _carried("baseline"), _carried("pr1855")
    assert pgolf.load_recipe("pr1855").model.parallel_residual == "cross_lanes"
    assert "forward_cross_lanes" in lanes["pgolf/model/gpt.py"] and "forward_cross_lanes" not in base["pgolf/model/gpt.py"]
    assert "forward_lanes" not in lanes["pgolf/model/gpt.py"]  # separate lanes are off in both
    assert "ns_grouping must be" not in base["pgolf/optim/muon.py"]  # Muon's choice checks folded away
    assert "is_muon" in base["pgolf/optim/muon.py"]
    assert pgolf.load_recipe("baseline").quant.method == "percentile"
    assert "round_to_nearest_sdclip" not in base["pgolf/quant/methods.py"]
    assert "round_to_nearest_sdclip" in lanes["pgolf/quant/methods.py"]  # pr1855's GPTQ falls back to it
    assert "lqer_top_k" not in base["pgolf/quant/layout.py"]
