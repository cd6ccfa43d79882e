"""Packing (`vlsft.packing`) on bad or changed input, as a user meets it: pack planning agrees with validation, a row
failing mid-run inside a pack is skipped and counted (or named by its dataset index), the evaluation loss over an
uneven last batch on 2 processes equals 1 process, a resumed run whose pack plan changed is refused with the fix, and
a family that cannot pack is refused by the dry run."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from tests.test_loss import make_trainer, rows_of_different_lengths
from tests.test_validation_bad_input import picture_rows
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.data.training_rows import TrainingRowError

# -- pack planning judges rows as validation does -----------------------------------------------------------------


def test_a_row_cut_under_allow_truncated_end_of_turn_is_planned_as_validation_passed_it(tiny, tmp_path):
    """Rows of 29, 62, 25 and 50 tokens with `max_length=40`: validation lets the two long rows through with their
    end-of-turn cut (`allow_truncated_end_of_turn`), so planning must too, counting each as 40 tokens (alone in a pack),
    and one epoch trains every row."""
    model, processor = tiny
    trainer = make_trainer(
        model, processor, tmp_path, packing=True, max_length=40, allow_truncated_end_of_turn=True,
        per_device_train_batch_size=1, max_steps=-1, num_train_epochs=1,
    )
    assert sorted(trainer.train_dataset.plan) == [[0], [1], [2], [3]]  # 29 + 25 > 40: no two rows share a pack
    trainer.train()
    assert trainer.state.global_step == 4
    # Without the option, validation (not planning) refuses the rows, naming them.
    with pytest.raises(ValueError, match=r"row 1: max_length=40 cuts the final end-of-turn token"):
        make_trainer(model, processor, tmp_path / "strict", packing=True, max_length=40)


# -- a row failing mid-run inside a pack --------------------------------------------------------------------------


def packed_picture_trainer(tiny, tmp_path, rows, **overrides):
    model, processor = tiny
    args = VLSFTConfig(
        output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=1, max_steps=-1,
        num_train_epochs=1, save_strategy="no", logging_steps=1, gradient_checkpointing=False, disable_tqdm=True,
        use_cpu=True, packing=True, max_length=80, **overrides,
    )
    return VLSFTTrainer(copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)


def test_a_packed_row_failing_mid_run_is_skipped_and_counted(tiny, tmp_path, caplog):
    rows = picture_rows(tmp_path / "images")
    rows[2]["images"] = [str(tmp_path / "missing.png")]  # refused by validation: the kept rows shift by one
    trainer = packed_picture_trainer(tiny, tmp_path, rows, invalid_rows="skip")
    plan = trainer.train_dataset.plan
    assert max(len(pack) for pack in plan) > 1  # row 5 shares its pack with other rows, which still train
    (tmp_path / "images" / "5.png").unlink()  # deleted after validation
    with caplog.at_level(logging.WARNING, logger="vlsft.data.training_rows"):
        trainer.train()
    assert trainer.state.global_step == len(plan)
    assert trainer.rows_skipped_in_training == {"train dataset": 1}
    assert "dropped train dataset row 5 during training: image file not found" in caplog.text
    # Every other row trained: the supervised tokens of the epoch are those of the 6 rows left.
    every_row = make_trainer(*tiny, tmp_path / "rows", rows=[r for n, r in enumerate(rows) if n not in (2, 5)])
    batch = every_row.data_collator([every_row.train_dataset[i] for i in range(6)])
    assert trainer.state.log_history[-1]["num_supervised_tokens"] == int((batch["labels"][:, 1:] != -100).sum())


def test_a_packed_row_failing_mid_run_is_named_by_its_dataset_index(tiny, tmp_path):
    rows = picture_rows(tmp_path / "images")
    rows[2]["images"] = [str(tmp_path / "missing.png")]
    trainer = packed_picture_trainer(tiny, tmp_path, rows, invalid_rows="skip")
    (tmp_path / "images" / "5.png").write_bytes(b"")  # emptied after validation
    trainer.args.invalid_rows = "raise"
    with pytest.raises(TrainingRowError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("train dataset row 5 failed in the middle of training: image cannot be decoded"), message
    assert "set `invalid_rows: skip`" in message


def test_a_batch_whose_every_row_fails_mid_run_weighs_nothing(tiny, tmp_path):
    """When every row of a (packed) micro-batch fails, the step runs on the last good batch with nothing supervised:
    its labels ignored and, for weighted rows, its weights 0 (the step's divisor sums the weights)."""
    from tests.test_weights import rows_only
    from vlsft.data.training_rows import FaultTolerantCollator
    from vlsft.loss import summed_label_weight

    model, processor = tiny
    trainer = make_trainer(model, processor, tmp_path, rows=rows_only(), packing=True, max_length=4096)
    collate = FaultTolerantCollator(trainer.data_collator, "train dataset", "skip", trainer.rows_skipped_in_training)
    good = collate([[trainer.train_dataset.dataset[0]]])
    assert summed_label_weight(good) > 0 and "label_weights" in good
    broken = picture_rows(tmp_path / "images", count=1)
    (tmp_path / "images" / "0.png").unlink()
    fallback = collate([broken])
    assert trainer.rows_skipped_in_training == {"train dataset": 1}
    assert summed_label_weight(fallback) == 0 and (fallback["labels"] == -100).all()


# -- evaluation over an uneven last batch --------------------------------------------------------------------------


def test_packed_eval_sums_are_per_row_as_padded_ones(tiny, tmp_path):
    """A packed eval batch gives one sum per packed row, equal to the padded batch's sum of that row: accelerate's
    duplicate rows (the padding of an uneven last batch across ranks) are then dropped row by row, not pack by pack."""
    model, processor = tiny
    padded = make_trainer(model, processor, tmp_path / "padded")
    packed = make_trainer(model, processor, tmp_path / "packed", packing=True, max_length=4096)
    rows = rows_of_different_lengths()
    with torch.no_grad():
        padded_sums = padded.supervised_sums(padded.model, padded.data_collator(rows)).row_sums
        packed_sums = packed.supervised_sums(packed.model, packed.data_collator(rows)).row_sums
    assert packed_sums.shape == padded_sums.shape == (4, 4)
    assert torch.allclose(packed_sums, padded_sums, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["packing", "padding_free"])
def test_packed_eval_loss_on_two_processes_equals_one_process(mode, tmp_path):
    """Real `accelerate launch` over gloo: 5 eval rows, 2 per device on 2 ranks (the last batch: 1 real row, 3
    duplicates). The eval loss equals the 1-process one (and the padded one) to float rounding; before the fix it was
    off by 6e-4 (duplicates trimmed per pack)."""
    from tests.scripts.packed_eval import evaluate
    from tests.test_distributed import launch

    script = Path(__file__).parent / "scripts" / "packed_eval.py"
    out = tmp_path / "two.pt"
    launch([str(script), "--out", str(out), "--mode", mode], timeout=300)
    two = torch.load(out)
    assert two["world_size"] == 2
    one, _ = evaluate(str(tmp_path / "one"), mode)
    padded, _ = evaluate(str(tmp_path / "padded"), "padded")
    assert one == pytest.approx(padded, rel=1e-5)
    assert two["eval_loss"] == pytest.approx(one, rel=1e-5)


# -- resuming on another pack plan ---------------------------------------------------------------------------------


def test_resuming_a_packed_run_on_another_pack_plan_is_refused_with_the_fix(tiny, tmp_path, caplog):
    """A checkpoint of a packed run (4 rows of 29, 62, 25 and 50 tokens, max_length 100: packs [0, 1], [2, 3])
    resumed with another max_length, another dataset, or without packing is refused before training, naming what
    changed and the fixes; the same plan resumes; `resume_with_new_pack_plan: true` resumes on the new plan with a
    warning. A checkpoint of an unpacked run resumed with packing is refused too."""
    from vlsft.packing.training import PLAN_FILE, PackPlanChangedError

    model, processor = tiny
    saving = dict(save_strategy="steps", save_steps=1, per_device_train_batch_size=1)
    first = make_trainer(model, processor, tmp_path / "packed", packing=True, max_length=100, **saving)
    first.train()
    checkpoint = str(tmp_path / "packed" / "checkpoint-1")
    assert (tmp_path / "packed" / "checkpoint-1" / PLAN_FILE).is_file()

    def resume(max_length=100, rows=None, **config):
        trainer = make_trainer(
            model, processor, tmp_path / "resumed", rows=rows, max_steps=2, max_length=max_length, **{**saving, **config}
        )
        trainer.train(resume_from_checkpoint=checkpoint)
        return trainer

    assert resume(packing=True).state.global_step == 2  # the same plan
    with pytest.raises(PackPlanChangedError) as error:
        resume(max_length=70, packing=True)  # 62 + 25 > 70: three packs
    message = str(error.value)
    assert "another pack plan (2 packs of 4 rows, max_length 100) than this run makes (3 packs of 4 rows, " in message
    assert "set `resume_with_new_pack_plan: true`" in message and "start a new run" in message
    with pytest.raises(PackPlanChangedError, match=r"than this run makes \(3 packs of 5 rows"):
        resume(rows=rows_of_different_lengths() + rows_of_different_lengths()[:1], packing=True)
    with pytest.raises(PackPlanChangedError, match=r"than this run makes \(no packing\)"):
        resume()
    with caplog.at_level(logging.WARNING):
        assert resume(max_length=70, packing=True, resume_with_new_pack_plan=True).state.global_step == 2
    assert "`resume_with_new_pack_plan=True`: resuming on the new plan from checkpoint-1" in caplog.text
    # The new plan is what the resumed run's checkpoints record.
    resumed_record = json.loads((tmp_path / "resumed" / "checkpoint-2" / PLAN_FILE).read_text())
    assert resumed_record["packs"] == 3

    unpacked = make_trainer(model, processor, tmp_path / "unpacked", **saving)
    unpacked.train()
    checkpoint = str(tmp_path / "unpacked" / "checkpoint-1")
    assert resume(max_length=None).state.global_step == 2  # unpacked on unpacked
    with pytest.raises(PackPlanChangedError, match=r"another pack plan \(no packing\) than this run makes \(2 packs"):
        resume(packing=True)


def test_resume_with_new_pack_plan_must_be_a_boolean(tmp_path):
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="`resume_with_new_pack_plan` must be true or false"):
            VLSFTConfig(output_dir=str(tmp_path), report_to="none", resume_with_new_pack_plan=bad)


# -- a family that does not pack is refused by the dry run ---------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-gemma3", "tiny-qwen3-vl"])
def test_the_dry_run_refuses_packing_on_a_family_that_does_not_pack(model, tmp_path, capsys):
    """The family is known from the processor (built without weights here): `--dry-run` refuses packing on Gemma 3,
    whose record has no `packed_positions`, and the run refuses it before its datasets load (the data path does not
    exist: a later refusal would be about the data)."""
    from tests.test_recipe import tiny_recipe, write_recipe
    from vlsft.cli.train import main

    training = {"packing": True, "max_length": 512}
    raw = tiny_recipe(tmp_path / "no-such-data.jsonl", tmp_path / "out", model={"name_or_path": model}, training=training)
    path = write_recipe(tmp_path / "recipe.yaml", raw)
    packs = model == "tiny-qwen3-vl"
    assert main(["--config", str(path), "--dry-run"]) == (0 if packs else 2)
    out, err = capsys.readouterr()
    if packs:
        assert "packing    rows best-fit decreasing into packs of 512 tokens" in out
        return
    assert "vlsft: invalid recipe: `training`: packing is not supported for the Gemma 3 family" in err
    assert "Set `packing: false`" in err and "Traceback" not in err
    assert main(["--config", str(path)]) == 2
    assert "packing is not supported for the Gemma 3 family" in capsys.readouterr().err


def test_a_row_of_the_single_eval_dataset_failing_mid_run_is_skipped_and_counted(tmp_path):
    """`Trainer.evaluate` hands a single eval dataset (not a dict) to `get_eval_dataloader` itself: it is still the
    trainer's, whose rows carry their index and are skipped and counted (it used to stop the evaluation)."""
    from tests.scripts.packed_eval import evaluate

    loss, trainer = evaluate(str(tmp_path), "packing", deleted=2)
    assert trainer.rows_skipped_in_training == {"eval dataset 'eval'": 1} and loss > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["packing", "padded"])
def test_an_eval_row_skipped_mid_run_on_one_rank_keeps_the_two_process_loss_exact(mode, tmp_path):
    """5 picture rows, 2 per device on 2 ranks; row 2's image is deleted after validation, so rank 1 drops it (and
    its duplicate) under `invalid_rows: skip` while rank 0 drops nothing. The ranks still gather as many per-row sums
    (the dropped row keeps a place of zeros): no crash, and the loss equals 1 process's."""
    from tests.scripts.packed_eval import evaluate
    from tests.test_distributed import launch

    script = Path(__file__).parent / "scripts" / "packed_eval.py"
    out = tmp_path / "two.pt"
    launch([str(script), "--out", str(out), "--mode", mode, "--deleted", "2"], timeout=300)
    two = torch.load(out)
    one, trainer = evaluate(str(tmp_path / "one"), mode, deleted=2)
    assert trainer.rows_skipped_in_training == {"eval dataset 'eval'": 1}
    assert two["eval_loss"] == pytest.approx(one, rel=1e-5)
