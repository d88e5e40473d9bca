"""I2P prompt files ("Safe Latent Diffusion", arXiv 2211.05105): per-row seed, guidance scale and size, categories."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from concept_erase.errors import InvalidPromptError
from concept_erase.evaluation import generate
from concept_erase.evaluation.generate import generate_missing, plan_jobs
from concept_erase.evaluation.prompts import filter_categories, read_prompt_file

HEADER = ("prompt,categories,hard,inappropriate_percentage,nudity_percentage,overlay_percentage,lexica_url,sd_seed,"
          "sd_guidance_scale,sd_image_width,sd_image_height,sd_model,sd_safety_percentage\n")


def _i2p(tmp_path, *lines, name="i2p.csv"):
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


ROWS = ('a red circle,sexual,1,90.0,60.0,0.0,https://lexica.art/x,1,5,64,64,1.5,0.0',
        'a red circle,"sexual, violence",0,50.0,10.0,0.0,,2,5,64,64,1.5,0.0',
        'a blue star,hate,0,20.0,0.0,0.0,,1,5.0,32,32,1.5,0.0',
        'a red circle,sexual,1,90.0,60.0,0.0,,1,1.5,64,64,1.5,0.0',
        'a red circle,sexual,0,10.0,0.0,0.0,,,,,,,')


def test_i2p_columns_are_read_natively(tmp_path):
    rows = read_prompt_file(_i2p(tmp_path, *ROWS))
    assert [r.seed for r in rows] == [1, 2, 1, 1, None]
    assert [dict(r.sampling) for r in rows] == [
        {"guidance_scale": 5.0, "height": 64, "width": 64}, {"guidance_scale": 5.0, "height": 64, "width": 64},
        {"guidance_scale": 5.0, "height": 32, "width": 32}, {"guidance_scale": 1.5, "height": 64, "width": 64}, {}]
    extra = dict(rows[0].extra)
    assert extra["categories"] == "sexual" and extra["nudity_percentage"] == "60.0" and extra["hard"] == "1"
    assert not {"sd_seed", "sd_guidance_scale", "sd_image_width", "sd_image_height"} & set(extra)


def test_categories_filter(tmp_path):
    rows = read_prompt_file(_i2p(tmp_path, *ROWS))
    assert [r.source.rsplit(":", 1)[1] for r in filter_categories(rows, ["sexual"])] == ["2", "3", "5", "6"]
    assert len(filter_categories(rows, ["Violence", "hate"])) == 2
    with pytest.raises(InvalidPromptError, match="No prompt row is in categories.*hate, sexual, violence"):
        filter_categories(rows, ["shocking"])
    plain = tmp_path / "p.txt"
    plain.write_text("a red circle\n", encoding="utf-8")
    with pytest.raises(InvalidPromptError, match="no prompt source has one"):
        filter_categories(read_prompt_file(plain), ["sexual"])


@pytest.mark.parametrize("line,message", [
    ('a red circle,sexual,1,90,60,0,,4.5,5,64,64,1.5,0', r"i2p\.csv:2: seed '4\.5' is not a whole number"),
    ('a red circle,sexual,1,90,60,0,,4,5,-64,64,1.5,0', r"i2p\.csv:2: width -64 must be a positive multiple of 8"),
    ('a red circle,sexual,1,90,60,0,,4,5,64,60,1.5,0', r"i2p\.csv:2: height 60 must be a positive multiple of 8"),
    ('a red circle,sexual,1,90,60,0,,4,5,wide,64,1.5,0', r"i2p\.csv:2: width 'wide' is not a whole number"),
    ('a red circle,sexual,1,90,60,0,,4,high,64,64,1.5,0', r"i2p\.csv:2: guidance scale 'high' is not a number"),
    ('a red circle,sexual,1,90,60,0,,4,-1,64,64,1.5,0', r"i2p\.csv:2: guidance scale '-1' must be"),
])
def test_malformed_values_name_the_line(tmp_path, line, message):
    with pytest.raises(InvalidPromptError, match=message):
        read_prompt_file(_i2p(tmp_path, line))


def test_per_row_settings_reach_the_generator(tmp_path, monkeypatch, world_pipe):
    rows = read_prompt_file(_i2p(tmp_path, *ROWS))
    calls = []
    real = generate.generate_images

    def spy(pipe, prompts, seeds, **kwargs):
        calls.append((list(prompts), list(seeds), kwargs))
        return real(pipe, prompts, seeds, **kwargs)

    monkeypatch.setattr(generate, "generate_images", spy)
    jobs = plan_jobs(rows, tmp_path / "images", images_per_prompt=1, seed=7)
    defaults = {"num_inference_steps": 3, "guidance_scale": 4.0, "height": 64, "width": 64}
    assert generate_missing(world_pipe, jobs, batch_size=8, call_kwargs=defaults, progress=False) == 5
    # one call per kind of row; each with the row's own settings over the run's
    by_seeds = {tuple(s): k for _, s, k in calls}
    assert by_seeds[(1, 2)] == {**defaults, "guidance_scale": 5.0, "batch_size": 2}
    assert by_seeds[(1,)] in ({**defaults, "guidance_scale": 5.0, "height": 32, "width": 32, "batch_size": 1},
                              {**defaults, "guidance_scale": 1.5, "batch_size": 1})
    assert {"batch_size": 1, **defaults} in [k for _, _, k in calls]  # the row without settings: the run's
    assert [s for _, s, k in calls if k == {"batch_size": 1, **defaults}] == [[7]]  # ... and --seed
    images = {job.row: np.asarray(Image.open(job.path)) for job in jobs}
    assert images[2].shape == (32, 32, 3) and images[0].shape == (64, 64, 3)
    assert not np.array_equal(images[0], images[1])  # the row's seed changes the image
    assert not np.array_equal(images[0], images[3])  # ... and its guidance scale
    again = tmp_path / "again"
    jobs2 = plan_jobs(rows[:2], again, images_per_prompt=1)  # the same batch: equal up to no rounding at all
    generate_missing(world_pipe, jobs2, call_kwargs=defaults, progress=False)
    assert np.array_equal(np.asarray(Image.open(jobs2[0].path)), images[0])  # deterministic per seed


def test_changing_a_rows_settings_regenerates_its_image(tmp_path):
    rows = read_prompt_file(_i2p(tmp_path, ROWS[0]))
    other = read_prompt_file(_i2p(tmp_path, ROWS[0].replace(",5,64,64,", ",6,64,64,"), name="other.csv"))
    a, b = plan_jobs(rows, tmp_path, images_per_prompt=1), plan_jobs(other, tmp_path, images_per_prompt=1)
    assert a[0].path == b[0].path and a[0].tag != b[0].tag


def test_eval_command_on_an_i2p_file(tmp_path, capsys):
    from concept_erase.cli import main

    path = _i2p(tmp_path, ROWS[0], ROWS[1], ROWS[2].replace(",32,32,", ",64,64,"), ROWS[4])
    out = tmp_path / "eval"
    assert main(["eval", "--prompts", str(path), "--categories", "sexual", "--steps", "2", "--images-per-prompt",
                 "1", "--no-fid", "--quiet", "--out", str(out)]) == 0
    with open(out / "scores" / "base.csv", encoding="utf-8") as f:
        scored = list(csv.DictReader(f))
    assert [(r["row"], r["seed"]) for r in scored] == [("0", "1"), ("1", "2"), ("2", "0")]  # no hate row
