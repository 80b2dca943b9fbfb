import json

import pytest

import nodule_bundle.data.synth as synth
from nodule_bundle.data.phantom import PhantomConfig, make_scan

TINY = PhantomConfig(fov_mm=(100.0, 90.0, 50.0), nodules_per_scan=(3, 5))


def _write(out, seed=3):
    return synth.write_phantom_dataset(out, scans=2, seed=seed, cfg=TINY, workers=1, negatives_per_scan=2)


def test_an_interrupted_synth_goes_on_from_the_scans_it_finished(tmp_path, monkeypatch):
    whole = json.loads(_write(tmp_path / "whole").read_text())
    rendered = []

    def failing_on_the_second(seed, index, cfg):
        if index == 1:
            raise KeyboardInterrupt
        return make_scan(seed, index, cfg)

    monkeypatch.setattr(synth, "make_scan", failing_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "cut")
    assert not (tmp_path / "cut" / "datalist.json").exists()
    assert len(list((tmp_path / "cut" / synth.PROGRESS_DIR).iterdir())) == 1

    def counting(seed, index, cfg):
        rendered.append(index)
        return make_scan(seed, index, cfg)

    monkeypatch.setattr(synth, "make_scan", counting)
    resumed = json.loads(_write(tmp_path / "cut").read_text())
    assert rendered == [1]  # the first scan was taken from its record
    assert resumed == whole
    for name in ("annotations.csv", "candidates.csv"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert not (tmp_path / "cut" / synth.PROGRESS_DIR).exists()


def test_a_record_of_other_arguments_or_a_lost_file_is_not_used(tmp_path, monkeypatch):
    rendered = []

    def counting_then_interrupted(seed, index, cfg):
        if index == 1:
            raise KeyboardInterrupt
        rendered.append((seed, index))
        return make_scan(seed, index, cfg)

    monkeypatch.setattr(synth, "make_scan", counting_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, seed=3)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, seed=4)  # another seed: scan 0 rendered again
    for image in (tmp_path / "images").iterdir():
        image.unlink()
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, seed=4)  # its image gone: rendered again
    assert rendered == [(3, 0), (4, 0), (4, 0)]
