"""Video rows (Qwen3-VL, Qwen2.5-VL): decoded frames equal transformers' own PyAV reader; `input_ids`,
`pixel_values_videos`, `video_grid_thw` (`second_per_grid_ts`) and `mm_token_type_ids` equal the processor's own
`apply_chat_template` output for the same frames; supervised text is exactly each assistant turn, whatever the batch;
bad videos are named by row and video before training."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers.video_utils import VideoMetadata
from transformers.video_utils import load_video as transformers_load_video

from tests.conftest import assistant, image
from tests.test_families_qwen3_5 import real_qwen3_5_processor  # noqa: F401 (a fixture)
from tests.test_loss import make_trainer
from tests.test_masks import supervised_runs
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.templates import stock_template, training_template
from vlsft.testing.tiny_qwen import build_tiny_qwen2_5_vl
from vlsft.testing.tiny_video import moving_shape_frames, write_moving_shape, write_video, write_zero_frame_video
from vlsft.data.validation import validate_rows
from vlsft.data.video import load_video, probe_video

QUESTION = "Which way does the square move?"
VIDEO_ITEM = {"type": "video"}


def user_video(*parts):
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def video_row(video, answer="right", **extra):
    return {"messages": [user_video(VIDEO_ITEM, QUESTION), assistant(answer)], "videos": [video], **extra}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Tiny clips of moving shapes, in every container the tests need."""
    root = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_moving_shape(root / "right.mp4", num_frames=20, fps=4, size=(66, 46), direction="right"),
        "webm": write_moving_shape(root / "down.webm", num_frames=12, fps=6, size=(64, 48), direction="down"),
        "gif": write_moving_shape(root / "left.gif", num_frames=9, fps=3, size=(65, 47), direction="left"),
        "long": write_moving_shape(root / "long.mp4", num_frames=240, fps=24, size=(64, 48), direction="up"),
        # H.264 with B-frames: frames decode out of presentation order.
        "bframes": write_video(root / "bframes.mp4", moving_shape_frames(60), fps=24, options={"g": "12", "bf": "3"}),
        "one_frame": write_moving_shape(root / "one.mp4", num_frames=1, fps=4),
        "zero_frames": write_zero_frame_video(root / "zero.mp4"),
        "corrupt": _corrupt(root / "corrupt.mp4"),
        "root": root,
    }


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video stream" * 64)
    return path


@pytest.fixture(scope="module")
def qwen3(tiny):
    return tiny[1], VisionChatCollator(tiny[1], training_template("qwen3_vl"))


@pytest.fixture(scope="module")
def qwen25():
    model, processor = build_tiny_qwen2_5_vl(seed=0)
    return model, processor


# -- decoding ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif", "long", "bframes"])
def test_seeking_decoder_gives_transformers_pyav_frames(videos, kind):
    """The frames vlsft decodes by seeking are the frames transformers' `read_video_pyav` decodes front to back."""
    probe = probe_video(videos[kind])
    indices = sorted({0, 3, probe.total_frames // 2, probe.total_frames - 2, probe.total_frames - 1})
    ours = load_video(str(videos[kind]), None, lambda metadata: indices, None)
    theirs, _ = transformers_load_video(
        str(videos[kind]), backend="pyav", sample_indices_fn=lambda metadata, **_: np.array(indices)
    )
    assert ours.metadata.frames_indices == indices
    assert np.array_equal(ours.frames, theirs)


def test_decoder_seeks_instead_of_decoding_every_frame(videos):
    """20 frames sampled from 240 (a keyframe every 4): at most 4 frames decoded per sampled frame, far fewer than
    the 240 a front-to-back decode reads."""
    indices = list(np.linspace(0, 239, 20).round().astype(int))
    video = load_video(str(videos["long"]), None, lambda metadata: indices, None)
    assert video.frames.shape[0] == 20 and video.decoded_frames <= 20 * 4


def test_frame_count_and_rate_read_without_decoding(videos):
    probe = probe_video(videos["long"])
    assert (probe.total_frames, probe.fps, probe.width, probe.height) == (240, 24.0, 64, 48)
    assert len(probe.keyframe_pts) > 1  # keyframes every 4 frames: the decoder seeks between them


# -- exactness against the processor -------------------------------------------------------------------------------


def _decoded(video, fps=None):
    """All frames of a video (PyAV through transformers) and its metadata: what the processor samples from."""
    if isinstance(video, (list, dict)):
        frames = video["frames"] if isinstance(video, dict) else video
        return [np.asarray(frame) for frame in frames], VideoMetadata(total_num_frames=len(frames), fps=fps)
    # webm and mkv store no frame count, which transformers' reader then reports as 0: count the packets instead.
    total = probe_video(video).total_frames
    frames, metadata = transformers_load_video(
        str(video), backend="pyav", sample_indices_fn=lambda metadata, **_: np.arange(total)
    )
    metadata.total_num_frames = total
    return frames, metadata


def processor_reference(processor, family, rows, decoded, video_kwargs=None, processor_attributes=None):
    """The processor's own `apply_chat_template` on the stock template, each video given as its full frame array
    with its metadata, and the processor sampling its frames itself."""
    processor = copy.copy(processor)
    processor.video_processor = copy.copy(processor.video_processor)
    for name, value in (processor_attributes or {}).items():
        setattr(processor.video_processor, name, value)
    conversations, metadata = [], []
    queue = iter(decoded)
    for row in rows:
        row_images = iter(row.get("images") or [])
        messages = []
        for message in row["messages"]:
            message = dict(message)
            if isinstance(message["content"], list):
                content = []
                for item in message["content"]:
                    if item.get("type") == "video":
                        frames, meta = next(queue)
                        item = {"type": "video", "video": frames}
                        metadata.append(meta)
                    elif item.get("type") == "image":
                        item = {"type": "image", "image": next(row_images)}
                    content.append(item)
                message["content"] = content
            messages.append(message)
        conversations.append(messages)
    kwargs = {"padding": True, "padding_side": "right", **(video_kwargs or {})}
    if metadata:
        kwargs["video_metadata"] = metadata
    return processor.apply_chat_template(
        conversations,
        chat_template=stock_template(family),
        tools=rows[0].get("tools"),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=kwargs,
    )


def assert_same(ours, theirs):
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
            "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    for key in keys:
        assert (key in ours) == (key in theirs), key
        if key in ours:
            assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif"])
def test_qwen3_vl_video_inputs_equal_the_processor(qwen3, videos, kind):
    """Including Qwen3-VL's textual timestamps (`<0.2 seconds>`) before each temporal group."""
    processor, collator = qwen3
    row = video_row(str(videos[kind]))
    ours = collator([row])
    assert_same(ours, processor_reference(processor, "qwen3_vl", [row], [_decoded(videos[kind])]))
    text = processor.tokenizer.decode(ours["input_ids"][0])
    assert "seconds>" in text and text.count("<|video_pad|>") == int(ours["video_grid_thw"].prod() // 4)


def test_qwen3_vl_frame_lists_equal_the_processor(qwen3, videos, tmp_path):
    """Frame lists of PIL images and of image paths, with and without their own fps (without: taken as sampled at
    the processor's rate)."""
    processor, collator = qwen3
    frames = moving_shape_frames(6, size=(50, 38), direction="down")
    paths = []
    for number, frame in enumerate(frames):
        frame.save(tmp_path / f"f{number}.png")
        paths.append(str(tmp_path / f"f{number}.png"))
    for video, fps in ((frames, None), ({"frames": paths, "fps": 1.0}, 1.0)):
        row = video_row(video)
        reference = processor_reference(
            processor, "qwen3_vl", [row], [_decoded(frames, fps if fps else processor.video_processor.fps)]
        )
        assert_same(collator([row]), reference)


def test_mixed_batch_equals_the_processor_and_each_row_alone(qwen3, videos):
    """Video, image, image+video, two videos and text-only rows in one batch: inputs equal the processor's, and
    every row's labels are exactly its labels alone."""
    processor, collator = qwen3
    rows = [
        video_row(str(videos["mp4"])),
        {"messages": [user_video({"type": "image"}, "What colour?"), assistant("red")], "images": [image()]},
        {
            "messages": [user_video({"type": "image"}, VIDEO_ITEM, "Same colour?"), assistant("yes"),
                         user_video("Direction?"), assistant("right")],
            "images": [image()],
            "videos": [str(videos["mp4"])],
        },
        {"messages": [user_video(VIDEO_ITEM, "and", VIDEO_ITEM, "?"), assistant("down then left")],
         "videos": [str(videos["webm"]), str(videos["gif"])]},
        {"messages": [user_video("Hello"), assistant("Hi there")]},
    ]
    decoded = [_decoded(videos[k]) for k in ("mp4", "mp4", "webm", "gif")]
    batch = collator(rows)
    assert_same(batch, processor_reference(processor, "qwen3_vl", rows, decoded))
    expected = [["right<|im_end|>"], ["red<|im_end|>"], ["yes<|im_end|>", "right<|im_end|>"],
                ["down then left<|im_end|>"], ["Hi there<|im_end|>"]]
    for index, row in enumerate(rows):
        alone = collator([row])
        length = alone["input_ids"].shape[1]
        assert torch.equal(batch["labels"][index, :length], alone["labels"][0])
        assert (batch["labels"][index, length:] == IGNORE_INDEX).all()
        assert supervised_runs(processor.tokenizer, alone["input_ids"][0], alone["labels"][0]) == expected[index]


def test_no_video_timestamp_or_marker_token_is_supervised(qwen3, videos):
    processor, collator = qwen3
    batch = collator([video_row(str(videos["mp4"])), video_row(str(videos["gif"]), answer="left")])
    supervised = batch["labels"] != IGNORE_INDEX
    assert not (supervised & (batch["mm_token_type_ids"] != 0)).any()
    vision = processor.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"])
    assert not (supervised & torch.isin(batch["input_ids"], torch.tensor(vision))).any()
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        runs = supervised_runs(processor.tokenizer, ids, labels)
        assert all("seconds" not in run for run in runs)
    assert (batch["mm_token_type_ids"] == 2).sum() == batch["video_grid_thw"].prod(-1).sum() // 4


def test_video_in_a_tool_response(qwen3, videos):
    """A tool returns a clip (Qwen3-VL renders tool responses): inputs equal the processor's, the tool output is
    not supervised, the call and the final answer are."""
    processor, collator = qwen3
    call = {"type": "function", "function": {"name": "record", "arguments": {"seconds": 5}}}
    tools = [{"type": "function", "function": {"name": "record", "description": "Record a clip",
                                               "parameters": {"type": "object", "properties": {}}}}]
    row = {
        "messages": [
            user_video("Record and tell me the direction."),
            assistant("", tool_calls=[call]),
            {"role": "tool", "content": [VIDEO_ITEM, {"type": "text", "text": "clip"}]},
            assistant("It moves right."),
        ],
        "videos": [str(videos["mp4"])],
        "tools": tools,
    }
    batch = collator([row])
    assert_same(batch, processor_reference(processor, "qwen3_vl", [row], [_decoded(videos["mp4"])]))
    runs = supervised_runs(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert runs == ['<tool_call>\n{"name": "record", "arguments": {"seconds": 5}}\n</tool_call><|im_end|>',
                    "It moves right.<|im_end|>"]


def test_long_video_capped_by_video_max_frames(tiny, videos):
    """A 10 s clip at 24 fps sampled at 2 fps would be 20 frames; video_max_frames=6 spreads 6 over its whole length,
    as the processor with max_frames=6 does."""
    processor = tiny[1]
    collator = VisionChatCollator(processor, training_template("qwen3_vl"), video_max_frames=6)
    row = video_row(str(videos["long"]), answer="up")
    batch = collator([row])
    reference = processor_reference(
        processor, "qwen3_vl", [row], [_decoded(videos["long"])], processor_attributes={"max_frames": 6}
    )
    assert_same(batch, reference)
    assert batch["video_grid_thw"][0, 0] == 3  # 6 frames / temporal patch 2
    loaded = collator.load_videos([str(videos["long"])])[0]
    assert loaded.metadata.frames_indices[0] == 0 and loaded.metadata.frames_indices[-1] == 239


def test_video_options_reach_the_processor(tiny, videos):
    """video_fps and video_max_pixels: the same output as the processor configured alike."""
    processor = tiny[1]
    collator = VisionChatCollator(
        processor, training_template("qwen3_vl"), video_fps=1.0, video_max_pixels=32 * 32 * 8
    )
    row = video_row(str(videos["mp4"]))
    size = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 8}
    reference = processor_reference(
        processor, "qwen3_vl", [row], [_decoded(videos["mp4"])],
        processor_attributes={"fps": 1.0, "size": size},
    )
    assert_same(collator([row]), reference)


@pytest.mark.parametrize("fps", [None, 2.0])
def test_qwen2_5_vl_video_equals_the_processor_and_trains(qwen25, videos, fps):
    """Qwen2.5-VL: with its processor's default (every frame) and at 2 fps; `second_per_grid_ts` included, and the
    model's own forward (3D rope through get_rope_index) takes the batch."""
    model, processor = qwen25
    collator = VisionChatCollator(processor, training_template("qwen2_5_vl"), video_fps=fps)
    rows = [video_row(str(videos["gif"]), answer="left"),
            {"messages": [user_video({"type": "image"}, "Colour?"), assistant("red")], "images": [image()]}]
    batch = collator(rows)
    kwargs = {"fps": fps} if fps else {}
    reference = processor_reference(processor, "qwen2_5_vl", rows, [_decoded(videos["gif"])], kwargs)
    assert_same(batch, reference)
    assert supervised_runs(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["left<|im_end|>"]
    with torch.no_grad():
        ours = model(**batch)
        theirs = model(**reference)
    assert torch.isfinite(ours.loss) and torch.equal(ours.logits, theirs.logits)


def test_qwen3_vl_model_takes_the_video_batch(tiny, qwen3, videos):
    """The model's own forward (3D rope from `mm_token_type_ids` and `video_grid_thw`) gives the same logits for
    vlsft's batch as for the processor's, and the video pixels reach them."""
    model, (processor, collator) = tiny[0], qwen3
    rows = [video_row(str(videos["mp4"])), video_row(str(videos["webm"]), answer="down")]
    batch = collator(rows)
    reference = processor_reference(processor, "qwen3_vl", rows, [_decoded(videos["mp4"]), _decoded(videos["webm"])])
    with torch.no_grad():
        ours = model(**batch).logits
        assert torch.equal(ours, model(**reference).logits)
        blank = model(**{**batch, "pixel_values_videos": torch.zeros_like(batch["pixel_values_videos"])}).logits
    assert not torch.allclose(ours, blank)


def test_video_bytes_dicts_and_relative_paths(tiny, videos):
    processor = tiny[1]
    collator = VisionChatCollator(processor, training_template("qwen3_vl"), video_root=str(videos["root"]))
    data = Path(videos["mp4"]).read_bytes()
    batches = [
        collator([video_row(value)])
        for value in (str(videos["mp4"]), Path(videos["mp4"]).name, data, {"bytes": data, "path": None},
                      {"bytes": None, "path": str(videos["mp4"])})
    ]
    for batch in batches[1:]:
        assert_same(batch, batches[0])


def test_inline_video_items_and_dataset_rows(qwen3, videos):
    """A video given inline in its placeholder, and rows stored in a `datasets.Dataset` (Arrow adds None keys)."""
    processor, collator = qwen3
    row = video_row(str(videos["mp4"]))
    inline = {"messages": [user_video({"type": "video", "video": str(videos["mp4"])}, QUESTION), assistant("right")]}
    dataset = Dataset.from_list([row, {"messages": [user_video("Hi"), assistant("Hello")], "videos": []}])
    expected = collator([row])
    assert_same(collator([inline]), expected)
    assert_same(collator([dataset[0]]), expected)


def test_frame_lists_stored_in_a_dataset(qwen3):
    """Frame lists of PIL images stored by `datasets` (as `{"bytes", "path"}` dicts) validate and collate like the
    frames themselves; a 1-frame list is named."""
    processor, collator = qwen3
    frames = moving_shape_frames(4)
    dataset = Dataset.from_list([video_row(frames), video_row(frames[:1])])
    problems = [str(problem) for problem in validate_rows(dataset, collator).problems]
    assert problems == ["row 1: video 0 has 1 frame(s) sampled; Qwen3-VL needs at least 2 (temporal_patch_size): use "
                        "a longer clip or repeat its frame(s) in a frame list"]
    assert_same(collator([dataset[0]]), collator([video_row(frames)]))


# -- bad videos ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("corrupt", "video 0 cannot be decoded"),
        ("zero_frames", "video 0 has no frames"),
        ("one_frame", "video 0 has 1 frame(s) sampled; Qwen3-VL needs at least 2 (temporal_patch_size)"),
        ("missing", "video 0 not found: "),
    ],
)
def test_bad_video_is_named_by_row_and_video(qwen3, videos, kind, reason):
    processor, collator = qwen3
    path = str(videos["root"] / "missing.mp4") if kind == "missing" else str(videos[kind])
    rows = [video_row(str(videos["mp4"])), video_row(path)]
    with pytest.raises(RowError, match=r"batch row 1: " + reason.replace("(", r"\(").replace(")", r"\)")):
        collator(rows)
    result = validate_rows(rows, collator)
    assert [str(problem) for problem in result.problems][0].startswith("row 1: " + reason)
    assert len(result.problems) == 1


def test_placeholder_and_video_counts_must_match(qwen3, videos):
    processor, collator = qwen3
    row = {"messages": [user_video(VIDEO_ITEM, VIDEO_ITEM, "?"), assistant("x")], "videos": [str(videos["mp4"])]}
    with pytest.raises(RowError, match="2 video placeholder"):
        collator([row])
    assert str(validate_rows([row], collator).problems[0]) == "row 0: 2 video placeholder(s) but 1 video(s)"


def test_validation_counts_video_tokens_without_processing_pixels(tiny, videos):
    """The token count validation derives from frame count and size equals the collated row's: a max_length between
    the video's end and the row's end passes, one that cuts the video is refused."""
    processor = tiny[1]
    collator = VisionChatCollator(processor, training_template("qwen3_vl"))
    row = video_row(str(videos["mp4"]))
    batch = collator([row])
    length = batch["input_ids"].shape[1]
    video_end = int((batch["input_ids"][0] == collator.video_token_id).nonzero().max()) + 1
    ok = VisionChatCollator(processor, training_template("qwen3_vl"), max_length=length)
    assert validate_rows([row], ok).problems == []
    cut = VisionChatCollator(processor, training_template("qwen3_vl"), max_length=video_end - 1)
    problem = str(validate_rows([row], cut).problems[0])
    assert problem.startswith(f"row 0: max_length={video_end - 1} cuts video tokens (row is {length} tokens")
    with pytest.raises(RowError, match=r"cuts video tokens \(row has"):
        cut([row])
    # The expansion counted from sizes is what the collator spliced in for the one placeholder token.
    video = collator.load_videos([row["videos"][0]])[0]
    counted = collator.video_token_ids(*video.frames.shape[:3], video.metadata)
    unexpanded = len(collator.tokenize_rows([row])[0].input_ids)
    assert counted.numel() == length - unexpanded + 1


def test_skip_mode_counts_bad_video_rows(qwen3, videos):
    from vlsft.data.validation_report import skip_summary

    processor, collator = qwen3
    rows = [video_row(str(videos["mp4"])), video_row(str(videos["corrupt"])), video_row(str(videos["one_frame"]))]
    result = validate_rows(rows, collator)
    assert result.bad_indices == [1, 2]
    summary = skip_summary("train", result)
    assert "dropped 2 of 3 train rows" in summary and "1 bad video" in summary and "1 too few video frames" in summary


def test_odd_sizes_and_frame_lists_of_odd_frames(qwen3, videos):
    processor, collator = qwen3
    frames = moving_shape_frames(5, size=(37, 91), direction="right", shape="circle")
    row = video_row(frames)
    assert_same(collator([row]), processor_reference(processor, "qwen3_vl", [row], [_decoded(frames, 2)]))


# -- the recipe, end to end ----------------------------------------------------------------------------------------


def write_video_jsonl(directory: Path, rows: int = 8) -> Path:
    """The layout of docs/data-format.md: `train.jsonl` with `messages` + `videos` paths relative to it, clips under `clips/`;
    one row also carries an image, one is text only."""
    import json

    (directory / "clips").mkdir(parents=True)
    directions = list(("right", "left", "down", "up"))
    image_path = directory / "red.png"
    image().save(image_path)
    with open(directory / "train.jsonl", "w") as file:
        for number in range(rows):
            direction = directions[number % 4]
            clip = f"clips/{number}.mp4"
            write_moving_shape(directory / clip, num_frames=8, fps=4, direction=direction)
            row = {"messages": [user_video(VIDEO_ITEM, QUESTION), assistant(f"To the {direction}.")],
                   "videos": [clip], "images": []}
            if number == 1:
                row["messages"][0]["content"].insert(0, {"type": "image"})
                row["images"] = [str(image_path)]
            if number == 2:
                row = {"messages": [user_video("Hi"), assistant("Hello.")], "videos": [], "images": []}
            file.write(json.dumps(row) + "\n")
    return directory / "train.jsonl"


def test_video_recipe_dry_runs_and_trains_on_the_tiny_model(tmp_path, capsys, monkeypatch):
    """recipes/qwen3_vl_2b_video_lora_single_gpu.yaml: `--dry-run` passes as shipped; with the tiny Qwen3-VL and a local JSONL it
    trains (LoRA, videos decoded in a dataloader worker) and the loss is finite."""
    import math

    from vlsft.cli.train import main as train_main
    from vlsft.recipes import build as train_module
    from vlsft.recipes.loading import load_recipe

    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "qwen3_vl_2b_video_lora_single_gpu.yaml"
    assert train_main(["--config", str(recipe_path), "--dry-run"]) == 0
    data = write_video_jsonl(tmp_path / "data")
    recipe = load_recipe(
        recipe_path,
        [
            "--model.name_or_path", "tiny-qwen3-vl", "--model.dtype", "float32",
            "--data.train.0.path", str(data), "--lora.r", "4",
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--bf16", "false", "--activation_checkpointing", "false",
            "--dataloader_num_workers", "1", "--logging_steps", "1", "--save_strategy=\"no\"",
            "--layout.strategy", "cpu",
        ],
    )
    trainer = train_module.run(recipe)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and losses and all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    video_rows = [row for row in trainer.train_dataset if row["videos"]]
    batch = trainer.data_collator(video_rows[:2])
    assert batch["pixel_values_videos"].shape[0] > 0 and batch["video_grid_thw"].shape == (2, 3)


# -- inspection ----------------------------------------------------------------------------------------------------


def test_inspect_shows_tokens_per_video_and_a_strip_of_frames(qwen3, videos, tmp_path):
    """The terminal view names each video's frames and tokens; the HTML page shows its sampled frames as a strip
    with their timestamps, where its tokens are."""
    import io
    import re

    from vlsft.inspection import inspect

    processor, collator = qwen3
    rows = [video_row(str(videos["mp4"])),
            {"messages": [user_video({"type": "image"}, VIDEO_ITEM, "?"), assistant("left")],
             "images": [image()], "videos": [str(videos["gif"])]}]
    out = io.StringIO()
    views = inspect(rows, processor, collator=collator, rows="0:2", html=tmp_path / "rows.html", file=out, color=False)
    batch = collator([rows[0]])
    video_tokens = int((batch["mm_token_type_ids"][0] == 2).sum())
    text = out.getvalue()
    assert f"video 0 10 frames 66x46 at 0.0-4.8 s -> {video_tokens} tokens" in text
    row_0 = text.split("=== row 1")[0]
    assert row_0.count("[video 0: ") == 5  # one run of video tokens per temporal group (10 frames / 2)
    assert "[[right<|im_end|>]]" in text and "seconds>" in text
    assert views[1].videos[0].size == (65, 47) and views[1].image_tokens == [4]
    page = (tmp_path / "rows.html").read_text()
    strip = re.search(r'<div class="video" id="video-0">(.*?)</div></div>', page).group(1)
    assert strip.count("<img ") == 10
    indices = collator.load_videos([str(videos["mp4"])])[0].metadata.frames_indices
    expected_times = [f"{i / 4:.1f} s" for i in indices]  # the clip is 4 fps
    assert re.findall(r"<figcaption>([\d.]+ s)</figcaption>", strip) == expected_times


# -- the video demo ------------------------------------------------------------------------------------------------


def direction_accuracy(model_dir: Path, eval_jsonl: Path) -> float:
    """Share of held-out clips whose whole answer the trained model predicts (argmax at every supervised position,
    teacher-forced): the answers differ only in the direction, one of four."""
    import json

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlsft.config import VLSFTConfig
    from vlsft.collator import training_collator

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = [json.loads(line) for line in eval_jsonl.read_text().splitlines()]
    for row in rows:
        row["videos"] = [str(eval_jsonl.parent / video) for video in row["videos"]]
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "demo_video.yaml").read_text())
    video_options = {key: value for key, value in recipe["training"].items() if key.startswith("video_")}
    args = VLSFTConfig(output_dir=str(model_dir / "acc"), report_to="none", **video_options)
    collator = training_collator(processor, args)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = collator(rows[start : start + 16])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            predicted, targets = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
            supervised = targets != IGNORE_INDEX
            correct += int(((predicted == targets) | ~supervised).all(-1).sum())
    return correct / len(rows)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_video_demo_learns_which_way_the_square_moves(tmp_path):
    """`make demo-video`'s commands: generate the clips, train recipes/demo_video.yaml with `accelerate launch`; the
    model then names the direction of held-out clips far above the 25% of guessing."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    data, output_dir = tmp_path / "data", tmp_path / "demo-video"
    # One thread: the run is then the one the figures of docs/data-format.md come from (CPU kernels sum in another order with
    # another thread count, and 600 steps on a tiny model amplify that; with 2 threads one run reached 45%).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "vlsft.testing.demo_video", str(data)], cwd=repo, env=env, check=True, timeout=300)
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--num_processes", "1", "--cpu", "vlsft/train.py",
               "--config", "recipes/demo_video.yaml", "--output_dir", str(output_dir),
               "--data.train.0.path", str(data / "train.jsonl"), "--data.eval.0.path", str(data / "eval.jsonl")]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=850)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert eval_losses[-1] <= 0.2 * eval_losses[0], eval_losses
    assert direction_accuracy(output_dir, data / "eval.jsonl") >= 0.6


def test_video_collate_benchmark_prints_its_table(capsys):
    """benchmarks/video_collate.py on a very small workload, one repetition: every row and column comes out (it
    asserts inside that both sides' tensors are identical). Timings are never asserted."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "video_collate.py"
    spec = importlib.util.spec_from_file_location("vlsft_video_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--reps", "1", "--size", "64", "--seconds", "2", "--fps", "8", "--rows", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and all(line.count("|") == 11 for line in lines)
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["1", "4"]


def test_video_options_are_checked():
    from vlsft.config import VLSFTConfig

    with pytest.raises(ValueError, match="`video_max_frames` must be positive"):
        VLSFTConfig(output_dir="unused", video_max_frames=0)
    with pytest.raises(ValueError, match=r"`video_min_frames` \(8\) is above `video_max_frames` \(4\)"):
        VLSFTConfig(output_dir="unused", video_min_frames=8, video_max_frames=4)


def test_recipe_mixes_video_and_image_sources(tmp_path, tiny):
    """A video JSONL (relative clip paths) mixed with an image-only JSONL: image rows get an empty `videos` list,
    clip paths resolve against their file's directory, and the mixed rows collate."""
    from tests.test_recipe import minimal, write_colour_dataset
    from vlsft.recipes.loading import recipe_from_dict
    from vlsft.recipes.datasets import build_datasets

    video_file = write_video_jsonl(tmp_path / "video", rows=4)
    image_file = write_colour_dataset(tmp_path / "images", rows=3)
    train, _ = build_datasets(recipe_from_dict(minimal(data={"train": [{"path": str(video_file)},
                                                                       {"path": str(image_file)}]})))
    assert len(train) == 7 and train[6]["videos"] == []
    assert train[0]["videos"] == [str(tmp_path / "video" / "clips" / "0.mp4")]
    batch = VisionChatCollator(tiny[1], training_template("qwen3_vl"))([train[i] for i in range(7)])
    assert batch["video_grid_thw"].shape[0] == 3 and batch["image_grid_thw"].shape[0] == 4  # row 2 is text only


# -- the Qwen3.5 generation (Qwen3.5 think / nothink, Qwen3.6, Qwen3.8: Qwen3VLProcessor, Qwen3-VL's video path) ----


def _qwen3_5_mixed_rows(family, videos):
    """Video, image, image+video over two turns, two videos and text-only rows; with reasoning on every turn where
    the family thinks by default (so no turn renders the empty reasoning block, which vlsft deliberately tokenizes
    as inference sees it: see tests/test_families_qwen3_5.py::split_empty_reasoning)."""
    from tests.test_families_qwen3_5 import thinker, thinking_on

    def reply(answer, reasoning):
        return thinker(answer, reasoning if thinking_on(family, {}) else None)

    return [
        {"messages": [user_video(VIDEO_ITEM, QUESTION), reply("right", "It moves to the right.")],
         "videos": [str(videos["mp4"])]},
        {"messages": [user_video({"type": "image"}, "What colour?"), reply("red", "All red.")], "images": [image()]},
        {
            "messages": [user_video({"type": "image"}, VIDEO_ITEM, "Same colour?"), reply("yes", "Both red."),
                         user_video("Direction?"), reply("right", "Left to right.")],
            "images": [image()],
            "videos": [str(videos["mp4"])],
        },
        {"messages": [user_video(VIDEO_ITEM, "and", VIDEO_ITEM, "?"), reply("down then left", "First down.")],
         "videos": [str(videos["webm"]), str(videos["gif"])]},
        {"messages": [user_video("Hello"), reply("Hi there", "A greeting.")]},
    ]


@pytest.mark.parametrize("family", ["qwen3_5_think", "qwen3_5_nothink", "qwen3_6", "qwen3_8"])
def test_qwen3_5_generation_video_batch_equals_the_processor_with_exact_supervision(family, videos):
    """Each Qwen3.5-generation template: a mixed video + image + text batch equals the processor's own
    `apply_chat_template` output (`input_ids`, `pixel_values_videos`, `video_grid_thw`, `mm_token_type_ids` with 2 on
    video tokens, textual timestamps); the supervised text is exactly each trained turn (reasoning included, thinking
    on); no video, timestamp or vision-marker token is supervised; every row's labels are its labels alone."""
    from tests.test_families import tiny
    from tests.test_families_qwen3_5 import expected_supervision

    processor = tiny(family)[1]
    collator = VisionChatCollator(processor, training_template(family))
    rows = _qwen3_5_mixed_rows(family, videos)
    batch = collator(rows)
    decoded = [_decoded(videos[k]) for k in ("mp4", "mp4", "webm", "gif")]
    assert_same(batch, processor_reference(processor, family, rows, decoded))
    assert (batch["mm_token_type_ids"] == 2).sum() == batch["video_grid_thw"].prod(-1).sum() // 4
    assert "seconds>" in processor.tokenizer.decode(batch["input_ids"][0])
    supervised = batch["labels"] != IGNORE_INDEX
    assert not (supervised & (batch["mm_token_type_ids"] != 0)).any()
    vision = processor.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"])
    assert not (supervised & torch.isin(batch["input_ids"], torch.tensor(vision))).any()
    for index, row in enumerate(rows):
        alone = collator([row])
        length = alone["input_ids"].shape[1]
        assert torch.equal(batch["labels"][index, :length], alone["labels"][0])
        assert (batch["labels"][index, length:] == IGNORE_INDEX).all()
        runs = supervised_runs(processor.tokenizer, alone["input_ids"][0], alone["labels"][0])
        assert runs == expected_supervision(family, row["messages"], {}), (index, runs)
        assert all("seconds" not in run for run in runs)
    if family != "qwen3_5_nothink":  # the reasoning itself is supervised
        assert supervised_runs(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == [
            "It moves to the right.\n</think>\n\nright<|im_end|>"
        ]


@pytest.mark.parametrize("family", ["qwen3_5_think", "qwen3_5_moe"])
def test_qwen3_5_model_takes_the_video_batch(family, videos):
    """The dense and the MoE hybrid model's own forward (3D rope from `mm_token_type_ids` and `video_grid_thw`, split
    per frame group as Qwen3-VL's) gives the same logits for vlsft's batch as for the processor's, and the video
    pixels reach them."""
    from tests.test_families import tiny

    model, processor = tiny(family)
    collator = VisionChatCollator(processor, training_template("qwen3_5_think"))
    rows = _qwen3_5_mixed_rows("qwen3_5_think", videos)[:1] + _qwen3_5_mixed_rows("qwen3_5_think", videos)[3:4]
    batch = collator(rows)
    decoded = [_decoded(videos[k]) for k in ("mp4", "webm", "gif")]
    reference = processor_reference(processor, "qwen3_5_think", rows, decoded)
    assert_same(batch, reference)
    with torch.no_grad():
        ours = model(**batch)
        assert torch.isfinite(ours.loss) and torch.equal(ours.logits, model(**reference).logits)
        blank = model(**{**batch, "pixel_values_videos": torch.zeros_like(batch["pixel_values_videos"])}).logits
    assert not torch.allclose(ours.logits, blank)


def test_qwen3_5_video_training_step_1x2_equals_2x1(videos, tmp_path):
    """One optimizer step of the tiny hybrid Qwen3.5 on a video row and a video + image row: a batch of 2 and 2
    accumulated micro-batches of 1 give the same weights, within 1e-4 of the update, and the vision tower (reached
    only through the videos and the image) moves."""
    from tests.test_families import tiny
    from tests.test_families_qwen3_5 import thinker

    model, processor = tiny("qwen3_5_think")
    rows = [
        {"messages": [user_video(VIDEO_ITEM, QUESTION), thinker("right", "It moves right.")],
         "videos": [str(videos["mp4"])], "images": []},
        {"messages": [user_video({"type": "image"}, VIDEO_ITEM, "Colour and direction?"),
                      thinker("red, down", "Red square, moving down.")],
         "videos": [str(videos["webm"])], "images": [image()]},
    ]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights, losses = [], []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        trainer = make_trainer(
            model, processor, tmp_path / f"{batch_size}x{accumulation}", rows=rows,
            per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, gradient_checkpointing=True,
        )
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        losses.append(trainer.state.log_history[0]["loss"])
    update = max((weights[0][n] - start[n]).abs().max() for n in start)
    difference = max((weights[0][n] - weights[1][n]).abs().max() for n in start)
    vision_update = max((weights[0][n] - start[n]).abs().max() for n in start if n.startswith("model.visual."))
    assert update > 1e-3 and vision_update > 0
    assert difference <= 1e-4 * update, (difference, update)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_qwen3_5_video_on_the_real_vocabulary_equals_the_processor(real_qwen3_5_processor, videos):
    """The same mixed batch on the real 248,044-rank Qwen3.5/3.6 vocabulary: the timestamps and the text around each
    video tokenize as the processor tokenizes them in context."""
    from tests.test_families_qwen3_5 import expected_supervision

    processor = real_qwen3_5_processor
    rows = _qwen3_5_mixed_rows("qwen3_5_think", videos)
    batch = VisionChatCollator(processor, training_template("qwen3_5_think"))(rows)
    decoded = [_decoded(videos[k]) for k in ("mp4", "mp4", "webm", "gif")]
    assert_same(batch, processor_reference(processor, "qwen3_5_think", rows, decoded))
    for index, row in enumerate(rows):
        runs = supervised_runs(processor.tokenizer, batch["input_ids"][index], batch["labels"][index])
        assert runs == expected_supervision("qwen3_5_think", row["messages"], {}), index
