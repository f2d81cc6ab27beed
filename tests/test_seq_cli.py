"""`marble-convert --restore-hidden`: a converted recurrent model continues a saved stream."""

import json

import pytest
import torch
from torch import nn

from marble_nb.convert_cli import main
from marble_nb.convert_recurrent import convert_recurrent, load_recurrent, save_recurrent

KWARGS = dict(input_size=5, hidden_size=4, num_layers=2, batch_first=True)


def test_restore_hidden_continues_the_stream(tmp_path, capsys):
    torch.manual_seed(0)
    gru = nn.GRU(**KWARGS).eval()
    torch.save(gru.state_dict(), tmp_path / "gru.pt")
    xs = torch.randn(2, 9, 5)
    with torch.no_grad():
        whole = gru(xs)[0]
    streaming = convert_recurrent(gru)
    streaming.stream(xs[:, :4])
    save_recurrent(streaming, tmp_path / "state.marble")
    args = [
        "--pytorch",
        str(tmp_path / "gru.pt"),
        "--model-class",
        "torch.nn:GRU",
        "--model-kwargs",
        json.dumps(KWARGS),
    ]
    args += ["--input-shape", "9,5", "--restore-hidden", str(tmp_path / "state.marble")]
    assert main([*args, "--output", str(tmp_path / "resumed.marble")]) == 0
    assert "restored state" in capsys.readouterr().out
    resumed = load_recurrent(tmp_path / "resumed.marble")
    torch.testing.assert_close(resumed.stream(xs[:, 4:]), whole[:, 4:], atol=1e-5, rtol=1e-4)


def test_restore_hidden_rejects_another_network(tmp_path):
    save_recurrent(convert_recurrent(nn.LSTM(5, 4)), tmp_path / "lstm.marble")
    kwargs = json.dumps(dict(in_features=5, out_features=4))
    args = ["--model-class", "torch.nn:Linear", "--model-kwargs", kwargs, "--input-shape", "5"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--restore-hidden", str(tmp_path / "lstm.marble"), "--output", str(tmp_path / "x.marble")])
    assert exit_info.value.code == 2
