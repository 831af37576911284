import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_selfseg.cli import main

from .conftest import regions_image

FAST = ["--set", "channels=8", "--set", "max_iterations=10", "--set", "scale=1.0", "--quiet"]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = regions_image(40)
    iio.imwrite(folder / "a.png", image)
    tifffile.imwrite(folder / "b.tif", image.mean(-1).astype(np.uint16))
    return folder


def test_segment_writes_tiff_and_sidecar(images, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", str(images), "-o", str(out), "--seed", "1", *FAST]) == 0
    for stem in ("a", "b"):
        labels = tifffile.imread(out / f"{stem}.tif")
        assert labels.shape == (40, 40) and labels.dtype in (np.uint8, np.uint16) and labels.min() >= 1
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["method"] == "feature-clustering" and record["seed"] == 1
        assert record["params"]["channels"] == 8 and record["input_shape"][:2] == [40, 40]
    assert not list(out.glob(".*part*"))  # no temporary files left behind


def test_bad_input_is_reported_and_the_others_still_written(images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["segment", str(images), "-o", str(out), *FAST]) == 1
    assert (out / "a.tif").exists() and (out / "b.tif").exists() and not (out / "broken.tif").exists()
    assert "broken.png" in capsys.readouterr().err


def test_bad_parameter_fails_before_any_work(images, tmp_path, capsys):
    assert main(["segment", str(images), "-o", str(tmp_path / "o"), "--set", "mu=-1"]) == 2
    assert "below its minimum" in capsys.readouterr().err
    assert main(["segment", str(images), "-o", str(tmp_path / "o"), "--method", "nope"]) == 2


def test_nifti_in_nifti_out(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    volume = np.stack([regions_image(32)[0].mean(-1)] * 3, axis=-1).astype(np.int16)  # (X, Y, Z) on disk
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(volume, affine), str(tmp_path / "vol.nii.gz"))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "vol.nii.gz"), "-o", str(out), *FAST]) == 0
    result = nibabel.load(str(out / "vol.nii.gz"))
    assert result.shape == volume.shape and np.allclose(result.affine, affine)


def test_skip_existing(images, tmp_path, capsys):
    out = tmp_path / "out"
    main(["segment", str(images / "a.png"), "-o", str(out), *FAST])
    assert main(["segment", str(images / "a.png"), "-o", str(out), "--skip-existing", *FAST]) == 0
    assert "1 skipped" in capsys.readouterr().out


def test_methods_lists_parameters(capsys):
    assert main(["methods"]) == 0
    assert "feature-clustering" in capsys.readouterr().out


def test_train_then_apply_gives_the_same_ids_everywhere(images, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    assert main(["train", str(images / "a.png"), "--method", "feature-clustering", "-o", str(model), *FAST]) == 0
    out = tmp_path / "out"
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, iio.imread(images / "b.tif"))
    (images / "b.tif").unlink()
    assert main(["apply", "--model", str(model), str(images), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    a = tifffile.imread(out / "a.tif")
    record = json.loads((out / "a.json").read_text())
    assert record["applied"] and record["method"] == "feature-clustering" and record["params"]["channels"] == 8
    from napari_selfseg import load_model

    assert np.array_equal(a, load_model(model, "cpu").predict(iio.imread(images / "a.png")))
    # an RGB model given a gray image: a clear message, no output
    assert main(["apply", "--model", str(model), str(gray), "-o", str(out), "--device", "cpu", "--quiet"]) == 1
    assert "trained on RGB images; this one is gray" in capsys.readouterr().err and not (out / "gray.tif").exists()


def test_apply_refuses_a_foreign_model_file(images, tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["apply", "--model", str(bad), str(images), "-o", str(tmp_path / "out")]) == 2
    assert "not a napari-selfseg model" in capsys.readouterr().err


def test_train_refuses_unpaired_masks(images, tmp_path, capsys):
    code = main(["train", str(images), "--labels", str(images / "a.png"), "-o", str(tmp_path / "m"), *FAST])
    assert code == 2 and "one mask per input" in capsys.readouterr().err


def test_distributed_apply_matches_the_serial_run(images, tmp_path):
    pytest.importorskip("distributed")
    model = tmp_path / "model.safetensors"
    main(["train", str(images / "a.png"), "-o", str(model), *FAST])
    (images / "broken.png").write_bytes(b"not a png")
    serial, spread = tmp_path / "serial", tmp_path / "spread"
    (images / "b.tif").unlink()  # gray: this RGB model would refuse it
    for seed in range(1, 4):
        iio.imwrite(images / f"c{seed}.png", regions_image(40, seed=seed)[0])
    assert main(["apply", "--model", str(model), str(images), "-o", str(serial), "--device", "cpu", "--quiet"]) == 1
    assert main(["apply", "--model", str(model), str(images), "-o", str(spread), "--device", "cpu", "--quiet",
                 "--scheduler", "local", "--workers", "2"]) == 1  # the broken file fails there too
    for stem in ("a", "c1", "c2", "c3"):
        assert np.array_equal(tifffile.imread(serial / f"{stem}.tif"), tifffile.imread(spread / f"{stem}.tif"))
