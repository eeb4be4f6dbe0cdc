"""The cost estimates of chapter 7: counted by formula, held to real interventions and a real Llama."""
import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.runs import scaling


@pytest.mark.parametrize("d, r, n_variables", [(8, None, 1), (16, None, 2), (16, 4, 1), (24, 6, 2), (32, 31, 1)])
def test_formula_counts_what_a_real_intervention_holds(d, r, n_variables):
    assert scaling.rotation_footprint(d, r, n_variables) == scaling.measure_footprint(d, r, n_variables)


def test_full_rotation_at_alpacas_width():
    full = scaling.rotation_footprint(4096)
    assert full["parameters"] == 4096**2 + 1 and full["buffers"] == 4096**2
    assert full["free"] == 4096 * 4095 // 2 + 1
    low = scaling.rotation_footprint(4096, 8)
    assert low["buffers"] == 0 and low["parameters"] == 4096 * 8 + 1


def test_bad_sizes_are_refused():
    for d, r, n in [(8, 9, 1), (8, 0, 1), (0, None, 1), (8, 2, 3)]:
        with pytest.raises(ValueError, match="n_variables <= r <= d"):
            scaling.rotation_footprint(d, r, n)


def test_llama_parameter_count_matches_a_built_model():
    shape = dict(hidden_size=32, num_layers=2, intermediate_size=48, vocab_size=50, num_heads=4)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=48, vocab_size=50, num_attention_heads=4,
                         num_key_value_heads=4, tie_word_embeddings=False)
    real = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert scaling.llama_parameter_count(**shape) == real
    assert 6.7e9 < scaling.llama_parameter_count(**scaling.ALPACA_7B) < 6.8e9  # LLaMA 7B


def test_paper_layers():
    assert scaling.paper_layers(32) == [0, 5, 10, 15, 20, 25, 30]
    assert scaling.paper_layers(4) == [0]


def test_footprint_checks_agree_with_the_formula():
    checks = scaling.footprint_checks([(16, None), (16, 4)])
    assert checks["formula agrees"].all() and checks["r"].tolist() == [16, 4]
    assert checks.loc[0, "buffers"] == 16 * 16 and checks.loc[1, "buffers"] == 0


def test_grid_estimate_of_alpacas_grid():
    e = scaling.grid_estimate(**scaling.ALPACA_7B, n_positions=13, rank=8, minutes_per_cell=23)
    assert e["layers"] == [0, 5, 10, 15, 20, 25, 30] and e["grid_cells"] == 91 and e["grid_rank"] == 8
    assert e["grid_layers"] == 7 and e["grid_positions"] == 13
    assert e["grid_gpu_hours"] == pytest.approx(4 * 91 * 23 / 60)
    full = scaling.rotation_footprint(4096)
    assert e["grid_full_gib"] == pytest.approx(91 * (full["parameters"] + full["buffers"]) * 4 / 2**30)
    assert 6.7 < e["model_params_b"] < 6.8


def test_footprint_summary_at_alpacas_width():
    s = scaling.footprint_summary(4096, 8)
    full, low = scaling.rotation_footprint(4096), scaling.rotation_footprint(4096, 8)
    assert s["full_parameters_m"] == full["parameters"] / 1e6 and s["low_parameters_k"] == low["parameters"] / 1e3
    assert s["full_resident_mib"] == full["resident"] * 4 / 2**20
    assert s["backward_block_mib"] == 8192**2 * 4 / 2**20 and s["resident_ratio"] == full["resident"] / low["resident"]
