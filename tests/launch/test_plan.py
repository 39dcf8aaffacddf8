"""`corolla plan` (the ranked table, --json, bad clusters) and `corolla submit`'s refusal of a layout that will not
fit, with the nearest one that does (a dry run: no Slurm needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import MULTILINGUAL
from launch.cli import main
from launch.data.corpus import TokenCorpus
from launch.plan.arithmetic import CHECKPOINT_BYTES_PER_PARAMETER
from launch.train import shards


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_plan_ranks_bloom_176b_layouts_with_bloom_s_own_first(capsys) -> None:
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+(yes|no)", line)]
    assert len(rows) == 10 and all(row[8] == "yes" for row in rows)
    assert ["4", "12", "8"] in [row[1:4] for row in rows[:5]]
    steps = [float(row[9]) for row in rows]
    assert steps == sorted(steps)
    # PP=48 leaves the output embedding a stage of its own: marked as the layouts corolla train refuses.
    assert [row[1:4] for row in rows if row[-1] == "(*)"] == [["4", "48", "2"], ["8", "48", "1"]]
    assert "(*) its last stage would hold the output embedding alone, which corolla train refuses" in out
    assert "recommended: parallel.tp=" in out
    configured = next(line for line in out.splitlines() if line.startswith("configured:"))
    assert "TP4 x PP12 x DP8, micro-batch 2, activation checkpointing, ZeRO-1" in configured
    assert ", fits," in configured and "its layout ranks" in configured


def test_plan_json_lists_every_layout(capsys) -> None:
    code, out, _ = run(capsys, "plan", "--json", "experiment=bloom-176b")
    assert code == 0
    layouts = json.loads(out)
    # Which entry the table recommends and which is configured: the JSON did not say.
    marked = {
        key: [(e["tp"], e["pp"], e["dp"], e["micro_batch"]) for e in layouts if e[key]]
        for key in ("recommended", "configured")
    }
    assert marked == {"recommended": [(4, 12, 8, 1)], "configured": [(4, 12, 8, 2)]}
    keys = {
        "tp",
        "pp",
        "dp",
        "micro_batch",
        "activation_checkpointing",
        "memory_gib",
        "fits",
        "step_time_s",
        "tflops_per_gpu",
    }
    assert all(keys <= set(layout) for layout in layouts)
    assert all(layout["tp"] * layout["pp"] * layout["dp"] == 384 and layout["tp"] <= 8 for layout in layouts)
    [bloom] = [
        layout
        for layout in layouts
        if (
            layout["tp"],
            layout["pp"],
            layout["dp"],
            layout["micro_batch"],
            layout["activation_checkpointing"],
            layout["zero_stage"],
        )
        == (4, 12, 8, 2, True, 1)
    ]
    assert bloom["fits"] and bloom["memory_gib"] < 80 and bloom["step_time_s"] == pytest.approx(105, rel=0.15)
    assert any(not layout["fits"] for layout in layouts)


def test_plan_takes_a_smaller_model_and_cluster(capsys) -> None:
    args = ["plan", "model=bloom-560m", "train=tiny", "train.global_batch=64", "cluster.nodes=1", "parallel=single"]
    code, out, _ = run(capsys, *args)
    assert code == 0 and "on 8 GPUs of jean-zay-a100" in out and "recommended:" in out
    # train=tiny trains in fp32, which an A100 runs at 19.5 TFLOP/s (TF32 off), not at its bf16 312
    assert ", fp32; on 8 GPUs" in out
    assert 0 < float(re.search(r"recommended: .*, ([\d.]+) TFLOP/s a GPU\)", out)[1]) < 19.5


def test_plan_names_the_validation_samples_that_take_in_the_layouts_they_leave_out(capsys) -> None:
    """Three validation samples left BLOOM-176B one layout, which no run trains: it said that only such layouts fit
    in 80 GiB and to change the nodes or the batch, and named no train.eval_samples that plans the others."""
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b", "train.eval_samples=3")
    assert code == 0 and "TP8 x PP24 x DP2 (train.eval_samples=16 plans them)" in out
    assert "change cluster.nodes or train.global_batch, or take in the layouts left out (above), for a layout" in out
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b", "train.eval_samples=16")
    assert code == 0 and "recommended: parallel.tp=4 parallel.pp=12 parallel.dp=8" in out
    # Micro-batches of 2 alone: 8 samples are no multiple of 2 x DP8, and were named as the fix.
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b", "plan.micro_batches=[2]", "train.eval_samples=8")
    assert code == 0 and "(train.eval_samples=16 plans them)" in out


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["cluster=local"], "cluster local has no GPUs: set cluster.gpus_per_node"),
        (["cluster=testcluster"], "cluster testcluster has no GPUs"),
        (["parallel.tp=16"], "parallel.tp=16 does not fit the 8 GPUs of a node of cluster jean-zay-a100"),
        (["cluster.peak_tflops=0"], "cluster jean-zay-a100 does not say its peak_tflops: set cluster.peak_tflops=..."),
        (["cluster.gpu_memory_gib=-1"], "gpu_memory_gib=-1.0: give finite figures, not negative (0: unknown)"),
        (["cluster.filesystem_gbps=-57"], "filesystem_gbps=-57.0: give finite figures, not negative (0: unknown)"),
        # NaN compared as neither negative nor positive: "nothing fits in nan GiB a GPU", and a ranking changed
        (["cluster.gpu_memory_gib=nan", "cluster.peak_tflops=inf"], "gpu_memory_gib=nan, peak_tflops=inf: give"),
        (["cluster.health_slowdown=nan"], "health_slowdown=nan must be above 1"),
        (["cluster.kernel_efficiency=0"], "kernel_efficiency=0.0 must lie in (0, 2]: 1 for A100s, or what"),
        (["cluster.health_slowdown=0.5"], "health_slowdown=0.5 must be above 1 (a rank slower than that many times"),
        # Each named alone: the line listed every count of the cluster, and the model's said nothing of a vocabulary.
        (["cluster.nodes=0"], "cluster jean-zay-a100: cluster.nodes=0 (at least 1): give each at least that"),
        (["model.vocab_size=-1"], "model bloom-176b: model.vocab_size=-1: layers, hidden size, heads and sequence"),
    ],
)
def test_plan_refuses_bad_cluster_descriptions(capsys, overrides: list[str], expected: str) -> None:
    code, out, err = run(capsys, "plan", "experiment=bloom-176b", *overrides)
    assert code == 2 and out == ""
    assert err.startswith("corolla: error: ") and expected in err and "\n" not in err


def test_plan_names_the_layouts_the_ramp_up_or_validation_leave_out(capsys) -> None:
    """BLOOM-1b7 on 128 GPUs: DP128 is its fastest layout, and validation's 64 samples left it out without a word."""
    small = ["model=bloom-1b7", "train.global_batch=512", "train.rampup.start=0", "cluster.nodes=16"]
    code, out, _ = run(capsys, "plan", *small)
    assert (
        code == 0
        and (
            "left out, as train.eval_samples=64 is no multiple of their micro-batch x DP: TP1 x PP1 x DP128 "
            "(train.eval_samples=128 plans them)"
        )
        in out
    )
    code, out, _ = run(capsys, "plan", *small, "train.eval_samples=128")
    assert code == 0 and "left out" not in out and "recommended: parallel.tp=1 parallel.pp=1 parallel.dp=128" in out
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b")
    assert "left out, as the ramp-up's batches are not all multiples of their micro-batch x DP: TP1 x PP6 x DP64" in out
    # With BLOOM's ramp-up too (model=bloom-1b7 keeps it), DP128 needs both settings: it was in neither line.
    code, out, _ = run(capsys, "plan", *small[:2], *small[3:])
    assert (
        code == 0
        and (
            "left out, as the ramp-up's batches are not all multiples, and train.eval_samples=64 is no multiple of "
            "their micro-batch x DP: TP1 x PP1 x DP128 (train.rampup.start=0 and train.eval_samples=128 plan them)"
        )
        in out
    )


def configured_line(capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    code, out, err = run(capsys, "plan", "experiment=bloom-176b", *overrides)
    assert code == 0, err
    return next(line for line in out.splitlines() if line.startswith("configured"))


def test_plan_says_how_to_make_a_configured_layout_take_the_clusters_gpus(capsys) -> None:
    assert configured_line(capsys, "parallel.dp=8", "cluster.nodes=24") == (
        "configured layout: tp=4 x pp=12 x dp=8 = 384 ranks, but 192 processes: set parallel.dp=4 or parallel.dp=0 "
        "(DP from the processes)"
    )
    # 384 GPUs split into no tp=4 x pp=10 x DP: parallel.dp=0 is no way out.
    assert configured_line(capsys, "parallel.pp=10", "parallel.dp=8").endswith(
        "tp=4 x pp=10 x dp=8 = 320 ranks, but 384 processes: change parallel.tp or parallel.pp to split them, or the "
        "process count"
    )
    assert configured_line(capsys, "parallel.pp=10").endswith(  # DP from the GPUs: none
        "do not split into tp=4 x pp=10: change parallel.tp or parallel.pp to split them, or the process count"
    )
    # More stages than layers, which no count of GPUs mends: it said 384 processes do not split into tp=4 x pp=80.
    assert configured_line(capsys, "parallel.pp=80") == (
        "configured layout: parallel.pp=80 stages for 70 layers: use at most one per layer"
    )


@pytest.mark.parametrize("axis", ["parallel.tp=0", "parallel.pp=0", "parallel.tp=-4", "parallel.dp=-1"])
def test_plan_refuses_a_layout_axis_below_one_in_one_line(capsys, axis: str) -> None:
    """parallel.tp=0 was a ZeroDivisionError's traceback; a negative one was planned around, as if not given."""
    code, out, err = run(capsys, "plan", "experiment=bloom-176b", axis)
    assert code == 2 and out == ""
    assert err.startswith("corolla: error: ") and "\n" not in err
    assert axis in err and "must be at least 1" in err


# Three layers on three GPUs: a global batch of 8 leaves only PP=3, whose last stage holds the output embedding alone.
LONE_EMBEDDING = [
    "model=bloom-560m",
    "model.num_layers=3",
    "parallel=single",
    "train.global_batch=8",
    "train.micro_batch=1",
    "train.rampup.start=0",
    "train.eval_samples=8",
    "cluster.nodes=1",
    "cluster.gpus_per_node=3",
    "cluster.gpu_memory_gib=12",
]


def test_plan_never_recommends_a_layout_corolla_train_refuses(capsys) -> None:
    """The ranking lists a layout whose last pipeline stage holds the output embedding alone, but recommended it as
    overrides to paste, which `corolla train` then refused."""
    code, out, _ = run(capsys, "plan", *LONE_EMBEDDING)
    assert code == 0 and "recommended:" not in out
    assert (
        "only layouts that leave a pipeline stage with the output embedding alone are valid and fit in 12 GiB a GPU, "
        "and corolla train refuses those: change cluster.nodes or train.global_batch for a layout it trains"
    ) in out
    code, out, _ = run(capsys, "plan", "--json", *LONE_EMBEDDING)
    assert {(layout["pp"], layout["fits"], layout["trainable"]) for layout in json.loads(out)} == {
        (3, True, False),
        (3, False, False),
    }
    code, out, _ = run(capsys, "plan", *LONE_EMBEDDING, "train.global_batch=12", "train.eval_samples=12")
    recommended = next(line for line in out.splitlines() if line.startswith("recommended:"))
    assert "parallel.pp=1 parallel.dp=3" in recommended


def dry_run(tokens: Path, run_dir: Path, *overrides: str) -> list[str]:
    # The test's token files are too small for BLOOM's sequences and validation: shorter ones, no validation (below).
    small_data = [f"data.tokens_dir={tokens}", "model.seq_length=32", "train.eval_interval=0"]
    return ["submit", "--dry-run", "experiment=bloom-176b", *small_data, f"run_dir={run_dir}", *overrides]


def test_submit_warns_when_the_signal_before_the_time_limit_leaves_no_time_to_save(tokens, capsys, tmp_path) -> None:
    """USR2 comes cluster.signal_delay_s before the time limit: too late, and the ranks are killed before their
    checkpoint is written, each job redoing the steps since its last. BLOOM-176B's 2.07 TB (fp32 weights and Adam's
    moments) at Jean Zay's 57 GB/s (BLOOM's 2.3 TB took ~40 s there): ~36 s."""
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run"))
    assert code == 0 and "signal_delay_s" not in out, err  # jean-zay-a100's 600 s
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", "cluster.signal_delay_s=30"))
    warning = next(line for line in out.splitlines() if "cluster.signal_delay_s=30" in line)
    assert re.fullmatch(
        r"corolla: warning: cluster\.signal_delay_s=30 leaves the ranks less than a step \(~\d+ s\) and its "
        r"checkpoint's save \(2\.07 TB at cluster\.filesystem_gbps=57: ~36 s\) before the time limit kills them: "
        r"each job that reaches it would redo the steps since its last checkpoint \(up to "
        r"train\.checkpoint_interval=100\); set cluster\.signal_delay_s=\d+ or more",
        warning,
    ), warning
    # Where the filesystem's speed is not given, only a step is counted: ~5 s at these 32 tokens a sequence.
    unknown = ["cluster.signal_delay_s=30", "cluster.filesystem_gbps=0"]
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", *unknown))
    assert code == 0 and "signal_delay_s" not in out, err


def test_an_elastic_runs_signal_warning_counts_the_step_of_its_slowest_node_count(tokens, capsys, tmp_path) -> None:
    """An elastic job may run on any of its node counts: on 35 nodes (TP 4 x PP 35 x DP 2) a step takes ~3 s, on 30
    (DP 4, PP 15) ~5 s, and a signal 4 s before the time limit leaves the job that got 30 nodes no time to finish one.
    Only the configured node count's step was counted."""
    elastic = ["parallel.elastic=true", "cluster.nodes=35", "cluster.signal_delay_s=4", "cluster.filesystem_gbps=0"]
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", *elastic, "cluster.min_nodes=35"))
    assert code == 0 and "signal_delay_s" not in out, err
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", *elastic, "cluster.min_nodes=30"))
    assert code == 0, err
    warning = next(line for line in out.splitlines() if "cluster.signal_delay_s=4 " in line)
    assert re.search(r"less than a step \(~5 s\) and its checkpoint's save", warning), warning


def test_the_planned_checkpoint_holds_what_the_ranks_write_of_each_parameter() -> None:
    assert 4 * len(shards.KEYS) == CHECKPOINT_BYTES_PER_PARAMETER  # fp32, each


def test_submit_passes_bloom_176b_as_bloom_trained_it(tokens, capsys, tmp_path) -> None:
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run"))
    assert code == 0, err
    assert "TP 4 x PP 12 x DP 8" in out and "#SBATCH --nodes=48" in out


def test_languages_whose_held_out_documents_are_short_are_validated_on_what_they_hold(tokens, capsys, tmp_path) -> None:
    """BLOOM's validation, 64 samples a language, on the test's token files (50 held-out documents a language): at 32
    tokens a sample each language holds fewer, and is validated on as many as make whole micro-batches of its 8
    replicas (2 x 8 = 16 samples at a time); at BLOOM's 2,048 none holds 16, and the run validates nothing. The job
    passes either way and says so: validation measures the run, it does not decide whether it can train."""
    bloom = ["submit", "--dry-run", "experiment=bloom-176b", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}"]
    code, out, err = run(capsys, *bloom, "model.seq_length=32")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if "validation on fewer held-out samples" in line]
    assert "than train.eval_samples=64 in" in line
    counts = dict(re.findall(r"(\w+_\w+) (\d+)", line.split("): ")[-1]))
    corpus = TokenCorpus(tokens, 50)
    for language, split in corpus.splits.items():
        held = (split.validation_tokens.size - 1) // 32
        assert int(counts.get(language, 64)) == min(held, 64) // 16 * 16, language
    code, out, err = run(capsys, *bloom)
    assert code == 0, err
    assert (
        "corolla: warning: no language's held-out documents hold 16 validation samples of seq_length + 1 = 2049 "
        "tokens (whole micro-batches of every data-parallel rank), so the run validates nothing" in out
    )
    assert "#SBATCH --nodes=48" in out


def test_submit_leaves_out_the_nodes_cluster_exclude_names(tokens, capsys, tmp_path) -> None:
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", "cluster.exclude=[jz-gpu-17,jz-gpu-3]"))
    assert code == 0, err
    assert "#SBATCH --exclude=jz-gpu-17,jz-gpu-3" in out


def test_submit_refuses_a_layout_that_will_not_fit_and_names_the_nearest(tokens, capsys, tmp_path) -> None:
    # 12 nodes of 50 GiB GPUs: BLOOM's TP4 x PP12 leaves DP2, each GPU with half its stage's optimizer states (~59 GiB
    # in all); twice the stages, on one DP rank, halve the stage.
    squeezed = ["cluster.nodes=12", "cluster.gpu_memory_gib=50"]
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", *squeezed))
    assert code == 2 and "#SBATCH" not in out and "\n" not in err
    assert re.search(r"TP4 x PP12 x DP2, micro-batch 2, activation checkpointing, ZeRO-1 needs ~\d+\.\d GiB a GPU", err)
    assert "more than the 50 GiB of jean-zay-a100's GPUs" in err
    nearest = re.search(r"the nearest layout that fits: ((?:\S+=\S+ ?)+) \(", err)
    assert nearest, err
    assert nearest[1].split() == [
        "parallel.tp=4",
        "parallel.pp=24",
        "parallel.dp=1",
        "train.micro_batch=2",
        "parallel.activation_checkpointing=true",
        "parallel.zero_stage=1",
    ]
    assert not (tmp_path / "run").exists()
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", *squeezed, *nearest[1].split()))
    assert code == 0, err


def test_submit_says_when_no_layout_of_its_gpus_fits(tokens, capsys, tmp_path) -> None:
    few = ["cluster.nodes=3", "parallel.tp=4", "parallel.pp=6", "parallel.dp=1"]
    code, _, err = run(capsys, *dry_run(tokens, tmp_path / "run", *few))
    assert code == 2 and "no layout of 24 GPUs fits: add nodes (cluster.nodes)" in err


A100_FIGURES = ["cluster.peak_tflops=312", "cluster.memory_bandwidth_gbps=2039", "cluster.intra_node_gbps=300"]
LOCAL_GPUS = ["cluster.gpus_per_node=8", "cluster.gpu_memory_gib=16", *A100_FIGURES, "cluster.inter_node_gbps=100"]


@pytest.mark.parametrize(
    ("ranks", "advice"),
    [
        ("parallel.dp=1", "train on more of this machine's 8 GPUs (parallel.tp x pp x dp ranks)"),
        ("parallel.dp=8", "train on more GPUs than this machine's 8: on a Slurm cluster's nodes (corolla submit"),
    ],
)
def test_train_here_says_how_to_get_more_gpus_when_no_layout_of_its_gpus_fits(
    tokens, capsys, tmp_path, ranks: str, advice: str
) -> None:
    """A run on this machine takes its ranks from the layout: it was told to add nodes (cluster.nodes), which
    `corolla train` here refuses as a setting of Slurm's."""
    train = ["train", "--dry-run", f"data.tokens_dir={tokens}", f"run_dir={tmp_path / 'run'}", "model=bloom-7b1"]
    layout = [
        "parallel.tp=1",
        "parallel.pp=1",
        ranks,
        "train.global_batch=64",
        "train.micro_batch=1",
        "train.eval_interval=0",
    ]
    code, _, err = run(capsys, *train, *LOCAL_GPUS, *layout)
    assert code == 2 and f"GPUs fits: {advice}" in err and "add nodes" not in err, err


def test_submit_refuses_tensor_parallelism_across_nodes(tokens, capsys, tmp_path) -> None:
    code, _, err = run(capsys, *dry_run(tokens, tmp_path / "run", "parallel.tp=16", "parallel.pp=6", "parallel.dp=4"))
    assert code == 2 and "parallel.tp=16 does not fit the 8 GPUs of a node of cluster jean-zay-a100" in err


def test_submit_and_plan_count_bloom_176b_alike(capsys, tmp_path) -> None:
    """The experiment kept train.yaml's 64k tokenizer: a dry run checked a model of 174.5B parameters against memory
    where `corolla plan experiment=bloom-176b` counted BLOOM's 176.2B (its 250,680-token vocabulary), and said
    neither. Both now count BLOOM's, and say its size, memory, step time and time to train."""
    code, planned, err = run(capsys, "plan", "experiment=bloom-176b")
    assert code == 0, err
    configured = re.search(r"^configured: .*: (\d+\.\d of 80 GiB, fits, \d+\.\d s a step)", planned, re.MULTILINE)
    days = re.search(r"^train\.steps=95,000 \(365\.4B tokens\): .*~(\d+\.\d) days configured$", planned, re.MULTILINE)
    assert configured and days, planned
    code, out, err = run(capsys, "submit", "--dry-run", "experiment=bloom-176b", f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    assert (
        f"176.2B parameters, vocabulary 250,680; estimated {configured[1]}, 158 TFLOP/s a GPU; train.steps=95,000 "
        f"(365.4B tokens) in ~{days[1]} days, ~121 jobs of cluster.time_limit_min=1200\n"
    ) in out


def test_plan_prefers_memory_to_spare_where_a_layout_s_times_are_alike(capsys) -> None:
    """In fp32 BLOOM-176B's fastest layout at ZeRO-0 took 78.6 of 80 GiB, at ZeRO-1 69.1 for 0.1% more time: the
    first was recommended, within the estimate's error of the GPUs' memory."""
    code, out, err = run(capsys, "plan", "experiment=bloom-176b", "train.precision=fp32")
    assert code == 0, err
    assert "recommended: parallel.tp=8 parallel.pp=12 parallel.dp=4 train.micro_batch=1" in out
    assert "parallel.zero_stage=1  (69.1 of 80 GiB" in out
    # A 312 TFLOP/s bf16 peak, fp32 planned at the A100's 19.5: the header said the bf16 one.
    assert "80 GiB and 19.5 TFLOP/s fp32 each)" in out


def test_plan_says_when_the_gpus_are_not_those_the_step_times_were_calibrated_on(capsys) -> None:
    h100 = ["cluster.peak_tflops=989", "cluster.memory_bandwidth_gbps=3350", "cluster.intra_node_gbps=450"]
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b", *h100)
    assert code == 0 and "note: jean-zay-a100's GPUs (989 TFLOP/s) are not the A100s the step times were" in out
    code, out, _ = run(capsys, "plan", "experiment=bloom-176b", *h100, "cluster.kernel_efficiency=0.77")
    assert code == 0 and "note:" not in out


def test_the_nearest_layout_that_fits_is_the_fastest_of_those_changing_as_little(capsys, tmp_path) -> None:
    """Activation checkpointing off at micro-batch 2 does not fit: micro-batch 1 without it (~76 s a step) and
    micro-batch 2 with it (~99 s) each change one setting; the slower was named."""
    bloom = ["submit", "--dry-run", "experiment=bloom-176b", f"run_dir={tmp_path / 'run'}"]
    code, _, err = run(capsys, *bloom, "parallel.activation_checkpointing=false")
    assert code == 2
    assert (
        "the nearest layout that fits: parallel.tp=4 parallel.pp=12 parallel.dp=8 train.micro_batch=1 "
        "parallel.activation_checkpointing=false parallel.zero_stage=1" in err
    )


def test_a_tensor_parallelism_no_node_count_can_hold_is_refused_as_such(capsys, tmp_path) -> None:
    """TP=3 was told to take 54 nodes, and there told that 112 heads do not split in 3."""
    corpus = [f"data.corpus={MULTILINGUAL}", f"run_dir={tmp_path / 'p'}"]
    code, _, err = run(capsys, "pipeline", "--dry-run", "experiment=bloom-176b", "parallel.tp=3", *corpus)
    assert code == 2 and err == (
        "corolla: error: parallel.tp=3 does not fit the 8 GPUs of a node of cluster jean-zay-a100: tensor parallelism "
        "stays within a node; choose a TP that divides 8"
    )


def test_a_time_limit_that_leaves_no_time_for_a_step_is_refused(tokens, capsys, tmp_path) -> None:
    """USR2 10 s into a 3-minute job, a step ~5 s and a checkpoint's load ~36 s: every job stopped before its first
    step, cleanly, and was requeued for ever."""
    short = ["cluster.time_limit_min=3", "cluster.signal_delay_s=170"]
    code, out, err = run(capsys, *dry_run(tokens, tmp_path / "run", *short))
    assert code == 2 and "#SBATCH" not in out
    assert re.fullmatch(
        r"corolla: error: cluster\.time_limit_min=3 leaves a job 10 s before Slurm's warning \(cluster\.signal_delay_s"
        r"=170\), less than a step \(~\d+ s\) and loading its checkpoint \(~36 s\): no job would train a step; raise "
        r"cluster\.time_limit_min or lower cluster\.signal_delay_s",
        err,
    ), err
    # An elastic job's slowest node count is the one counted, and fewer nodes are a fix.
    elastic = ["parallel.elastic=true", "cluster.nodes=35", "cluster.min_nodes=30", "cluster.filesystem_gbps=0"]
    code, _, err = run(
        capsys, *dry_run(tokens, tmp_path / "run", *elastic, "cluster.time_limit_min=1", "cluster.signal_delay_s=58")
    )
    assert code == 2 and re.search(r"less than a step \(~5 s on the node counts it may get\): no job", err), err
    assert err.endswith("lower cluster.signal_delay_s, or raise cluster.min_nodes"), err
