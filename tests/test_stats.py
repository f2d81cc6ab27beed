"""Statistics, figures and animations on datasets read by tonic's readers from fixture files."""

import numpy as np
from PIL import Image

from marble_nb.datasets import event_dataset, write_fixture
from marble_nb.stats import animate_events, event_stats, frame_grid, plot_stats, save_gif


def test_stats_match_the_written_events(tmp_path):
    files = write_fixture("cifar10dvs", tmp_path, per_class=2, n_events=70, seed=2)
    ds = event_dataset("cifar10dvs", tmp_path, "all")
    stats = event_stats(ds, progress=False)
    written = {path.split("/")[-1]: ev for path, ev in files.items()}
    for i, path in enumerate(ds.data):
        ev = written[path.split("/")[-1]]
        assert stats.n_events[i] == len(ev)
        assert stats.duration_us[i] == ev["t"].max() - ev["t"].min()
        assert np.isclose(stats.on_fraction[i], ev["p"].mean())
        assert np.isclose(stats.rate[i], len(ev) / (ev["t"].max() - ev["t"].min()) * 1e6)
    everything = np.concatenate(list(files.values()))
    expected = np.zeros((2, 128, 128), np.int64)
    np.add.at(expected, (everything["p"], everything["y"], everything["x"]), 1)
    np.testing.assert_array_equal(stats.heatmap, expected)
    rows = stats.table()
    assert [r["name"] for r in rows][:3] == ["airplane", "automobile", "bird"] and rows[-1]["name"] == "all"
    assert all(r["samples"] == 2 for r in rows[:-1]) and rows[-1]["samples"] == 20
    assert np.isclose(rows[-1]["events"], 70) and "<table>" in stats._repr_html_() and "airplane" in repr(stats)


class _NoSensor:
    "A tonic-style dataset without sensor_size, its recordings of different extents (N-Caltech101 as tonic reads it)."

    sensor_size = None

    def __init__(self, ds):
        self.items, self.classes = [ds[i] for i in range(len(ds))], ds.classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_heatmap_grows_with_recordings_of_different_sizes(tmp_path):
    write_fixture("ncaltech101", tmp_path, per_class=2, n_events=40, seed=4)
    ds = _NoSensor(event_dataset("ncaltech101", tmp_path, "all"))
    stats = event_stats(ds, progress=False)
    widths = [int(ds[i][0]["x"].max()) + 1 for i in range(len(ds))]
    assert len(set(widths)) > 1 and stats.heatmap.shape[2] == max(widths) and stats.heatmap.sum() == 40 * len(ds)
    assert sorted({r["name"] for r in stats.table()[:-1]}) == ["accordion", "airplanes", "anchor"]


def test_ncaltech101_heatmap_has_the_fixed_sensor_size(tmp_path):
    write_fixture("ncaltech101", tmp_path, per_class=2, n_events=40, seed=4)
    stats = event_stats(event_dataset("ncaltech101", tmp_path, "all"), progress=False)
    assert stats.heatmap.shape == (2, 180, 240) and stats.heatmap.sum() == 40 * 6
    assert [r["name"] for r in stats.table()[:-1]] == ["accordion", "airplanes", "anchor"]


def test_figures_grid_and_animation(tmp_path):
    write_fixture("dvsgesture", tmp_path, per_class=1, n_events=300)
    ds = event_dataset("dvsgesture", tmp_path, "train")
    fig = plot_stats(event_stats(ds, progress=False), "DVS-Gesture fixture")
    assert len(fig.axes) == 7 and fig._suptitle.get_text() == "DVS-Gesture fixture"
    grid = frame_grid(ds, per_class=2)
    assert len(grid.axes) == 11 * 2
    first = next(ax for ax in grid.axes if ax.images)
    assert first.images[0].get_array().shape == (128, 128, 3)
    events = ds[0][0]
    anim = animate_events(events, ds.sensor_size, n_frames=8)
    assert anim.to_jshtml().count("data:image/png;base64") == 8
    gif = save_gif(anim, tmp_path / "out" / "gesture.gif", fps=8)
    assert not list(gif.parent.glob(".*"))  # no temp file left
    with Image.open(gif) as image:
        assert (image.format, image.n_frames) == ("GIF", 8)
