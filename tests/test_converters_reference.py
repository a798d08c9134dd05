"""The PyTorch reference of DAC/ADC resolution (toolchain/converters.py, `rram eval --dac-bits B
--adc-bits B`): the quantiser's codes of known values, the row-tile split against an independent
im2col computation, and the CLI (results, bad input). Its agreement with the runtime campaign on
the real ResNet20: tests/test_converters_slow.py."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.converters import TILE_ROWS, ConverterReference, codes, quantize, row_tiles

from conftest import make_cifar, one_line_error, run_cli


def test_codes_of_known_partial_sums():
    # 4-bit signed ADC, range 7: step 1, codes -7..7, half to even, saturating
    p = torch.tensor([3.4, -2.5, 2.5, 3.5, 7.9, -100.0, 0.49])
    assert codes(p, torch.tensor(7.0), 4).tolist() == [3, -2, 2, 4, 7, -7, 0]
    assert quantize(p, torch.tensor(7.0), 4).tolist() == [3, -2, 2, 4, 7, -7, 0]
    # 6-bit signed, range 3.1: 31 codes a side, step 0.1; per column ranges broadcast
    assert codes(torch.tensor(1.26), torch.tensor(3.1), 6).item() == 13
    two = codes(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 4.0]]), 3)  # 3 codes a side: steps 1/3, 4/3
    assert two.tolist() == [[3, 1]]
    # unsigned DAC, 2 bits, range 3: codes 0..3 of step 1; negatives clip to 0
    assert codes(torch.tensor([-0.4, 1.5, 2.5, 9.0]), torch.tensor(3.0), 2, signed=False).tolist() == [0, 2, 2, 3]
    # 8-bit unsigned, range 255: the value itself
    assert codes(torch.tensor(200.2), torch.tensor(255.0), 8, signed=False).item() == 200


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 4)).eval()


def _im2col_partials(conv: nn.Conv2d, x: torch.Tensor, tiles) -> list[torch.Tensor]:
    """Per tile: (N, C_out, L) partial sums as a matrix product on the unfolded input (rows (c, kh, kw))."""
    cols = F.unfold(x, conv.kernel_size, padding=conv.padding)  # (N, C*kh*kw, L)
    w = conv.weight.detach().flatten(1)                         # (C_out, C*kh*kw)
    return [torch.einsum("ok,nkl->nol", w[:, r0:r1], cols[:, r0:r1]) for r0, r1 in tiles]


def test_tiles_cut_kernels_and_each_partial_sum_is_converted_per_column():
    model = _conv_model()
    x = torch.randn(16, 3, 6, 6)
    ref = ConverterReference(model, None, 4, tile_rows=8)
    ref.measure(x, batch_size=5)
    conv = model[0]
    r = ref.ranges["0"]
    assert r.tiles == [(0, 8), (8, 16), (16, 24), (24, 27)] == row_tiles(27, 8)  # 27 rows, kernels cut
    want = [p.abs().amax(dim=(0, 2)) for p in _im2col_partials(conv, x, r.tiles)]
    for got, exp in zip(r.p_top, want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)
    assert r.x_low < 0 and r.x_top == pytest.approx(float(x.abs().max()))
    assert ref.ranges["3"].tiles == [(r0, min(r0 + 8, 180)) for r0 in range(0, 180, 8)]  # Linear: its inputs

    # through the converters: the conv's output is the sum of each tile's 4-bit codes times its step, plus the bias
    seen = {}
    with ref.applied():
        conv.register_forward_hook(lambda m, i, o: seen.update(out=o))
        model(x)
    conv._forward_hooks.clear()
    manual = sum(codes(p, top.view(1, -1, 1), 4) * (top.view(1, -1, 1) / 7)
                 for p, top in zip(_im2col_partials(conv, x, r.tiles), r.p_top))
    manual = manual + conv.bias.detach().view(1, -1, 1)
    torch.testing.assert_close(seen["out"].flatten(2), manual, rtol=1e-5, atol=1e-5)
    for p, top in zip(_im2col_partials(conv, x, r.tiles), r.p_top):  # every column reaches its top code
        assert (codes(p, top.view(1, -1, 1), 4).abs().amax(dim=(0, 2)) == 7).all()
    # and the forward is restored on exit
    assert "forward" not in conv.__dict__ and torch.equal(model(x), _conv_model()(x))


def test_wide_converters_change_nothing_and_few_bits_do():
    model = _conv_model()
    x = torch.randn(32, 3, 6, 6)
    plain = model(x)
    wide = ConverterReference(model, 16, 16, tile_rows=8)
    wide.measure(x)
    with wide.applied():
        torch.testing.assert_close(model(x), plain, rtol=1e-3, atol=1e-3)
    for dac, adc, adc_range in ((2, None, "calibrated-per-column"), (None, 2, "full-scale")):
        few = ConverterReference(model, dac, adc, adc_range, tile_rows=8)
        few.measure(x)
        with few.applied():
            assert (model(x) - plain).abs().max() > 1e-2
    fs = ConverterReference(model, None, 6, "full-scale", tile_rows=8)
    fs.measure(x)
    col = model[0].weight.detach().abs().flatten(1).amax(1)
    torch.testing.assert_close(fs.ranges["0"].p_top[3], 3 * float(x.abs().max()) * col)  # 3 rows in the last tile


def test_eval_cli_converters_and_bad_input(tiny_checkpoint, tmp_path, capsys):
    root = make_cifar(tmp_path / "data", per_batch=20, test=40)
    ckpt = tiny_checkpoint()
    base = ["eval", ckpt, "--data", root, "--no-cache", "--json"]
    code, out, _ = run_cli(capsys, *base)
    plain = json.loads(out)["accuracy"]
    code, out, _ = run_cli(capsys, *base, "--dac-bits", "16", "--adc-bits", "16", "--range-images", "30")
    doc = json.loads(out)
    assert code == 0 and doc["accuracy"] == plain
    assert doc["converters"] == {"dac_bits": 16, "adc_bits": 16, "adc_range": "calibrated-per-column",
                                 "tile_rows": TILE_ROWS, "range_images": 30}
    code, out, _ = run_cli(capsys, *base, "--adc-bits", "3", "--sa1", "0.1", "--runs", "2")
    doc = json.loads(out)
    assert code == 0 and len(doc["accuracies"]) == 2 and doc["converters"]["adc_bits"] == 3
    assert doc["converters"]["range_images"] == 100  # the whole training split (< 500)

    for extra, words in [(["--adc-bits", "0"], "1 to 16"), (["--dac-bits", "17"], "1 to 16"),
                         (["--adc-range", "full-scale"], "give --dac-bits or --adc-bits"),
                         (["--dac-bits", "8", "--adc-range", "full-scale"], "give --adc-bits"),
                         (["--range-images", "8"], "give --dac-bits or --adc-bits"),
                         (["--adc-bits", "6", "--sa1", "0.1", "--calibrate", "8"], "--calibrate"),
                         (["--adc-bits", "6", "--range-images", "101"], "training split has 100")]:
        code, out, err = run_cli(capsys, *base, *extra)
        assert code == 2 and not out and words in one_line_error(err), (extra, err)
